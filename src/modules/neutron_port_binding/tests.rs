//! The run against an in-memory Neutron that behaves like ML2 for the calls made: writes in
//! order, check mode, idempotence, a failure midway, the wait, the audit.

use super::*;
use crate::ansible::{parse_args, render};
use api::{Agent, Binding};
use std::cell::RefCell;

const UUID: &str = "6c1a9e10-0000-4000-8000-000000000002";

struct Fake {
    aliases: Vec<String>,
    ports: RefCell<Vec<Port>>,
    bindings: RefCell<BTreeMap<String, Vec<Binding>>>,
    writes: RefCell<Vec<String>>,
    /// A write whose text starts with this fails with HTTP 500.
    fail_on: Option<String>,
    /// vif_type and vif_details of new bindings.
    new_vif: String,
    new_vif_details: Value,
    /// Whether activating wires the port at once (status ACTIVE).
    wires: bool,
    agents: Vec<Agent>,
}

fn err(status: u16, msg: &str) -> api::Error {
    api::Error::Status {
        method: "X",
        url: "http://fake/v2.0".into(),
        status,
        message: msg.into(),
    }
}

impl Fake {
    fn new(extended: bool) -> Fake {
        let ports: Value = serde_json::from_str(include_str!("fixtures/ports.json")).unwrap();
        let ports: Vec<Port> = serde_json::from_value(ports["ports"].clone()).unwrap();
        let b: Value = serde_json::from_str(include_str!("fixtures/bindings.json")).unwrap();
        let b: Vec<Binding> = serde_json::from_value(b["bindings"].clone()).unwrap();
        let mut bindings = BTreeMap::new();
        // port 0: active on cmp1, inactive on cmp2 (a prepared migration); port 1: unbound
        bindings.insert(ports[0].id.clone(), b);
        bindings.insert(
            ports[1].id.clone(),
            vec![Binding {
                host: String::new(),
                vif_type: "unbound".into(),
                vnic_type: "normal".into(),
                status: "ACTIVE".into(),
                ..Default::default()
            }],
        );
        Fake {
            aliases: if extended {
                vec!["binding".into(), "binding-extended".into()]
            } else {
                vec!["binding".into()]
            },
            ports: RefCell::new(ports),
            bindings: RefCell::new(bindings),
            writes: RefCell::new(Vec::new()),
            fail_on: None,
            new_vif: "ovs".into(),
            new_vif_details: json!({"port_filter": true, "ovs_hybrid_plug": false}),
            wires: true,
            agents: Vec::new(),
        }
    }
    fn write(&self, w: String) -> Result<(), api::Error> {
        if self.fail_on.as_deref().is_some_and(|f| w.starts_with(f)) {
            return Err(err(
                500,
                "Request Failed: internal server error while processing your request.",
            ));
        }
        self.writes.borrow_mut().push(w);
        Ok(())
    }
    fn set_port(&self, id: &str, host: &str) {
        for p in self.ports.borrow_mut().iter_mut().filter(|p| p.id == id) {
            p.host_id = host.into();
            p.status = if self.wires { "ACTIVE" } else { "DOWN" }.into();
        }
    }
}

impl Neutron for Fake {
    fn extensions(&self) -> Result<Vec<String>, api::Error> {
        Ok(self.aliases.clone())
    }
    fn ports(&self, ids: &[String]) -> Result<Vec<Port>, api::Error> {
        assert!(ids.len() <= PORTS_CHUNK);
        Ok(self
            .ports
            .borrow()
            .iter()
            .filter(|p| ids.contains(&p.device_id))
            .cloned()
            .collect())
    }
    fn port(&self, id: &str) -> Result<Port, api::Error> {
        self.ports
            .borrow()
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(|| err(404, "Port could not be found."))
    }
    fn bindings(&self, port: &str) -> Result<Vec<Binding>, api::Error> {
        Ok(self
            .bindings
            .borrow()
            .get(port)
            .cloned()
            .unwrap_or_default())
    }
    fn create_binding(&self, port: &Port, host: &str) -> Result<Binding, api::Error> {
        let port = port.id.as_str();
        self.write(format!("POST {port} {host}"))?;
        let mut all = self.bindings.borrow_mut();
        let bs = all.entry(port.into()).or_default();
        if bs.iter().any(|b| b.host == host) {
            return Err(err(409, "Binding already exists."));
        }
        // An unbound port's host-less active binding is replaced by the new one, active.
        let unbound = bs.iter().any(|b| b.host.is_empty() && b.is_active());
        bs.retain(|b| !b.host.is_empty());
        let b = Binding {
            host: host.into(),
            vif_type: self.new_vif.clone(),
            vnic_type: "normal".into(),
            status: if unbound { "ACTIVE" } else { "INACTIVE" }.into(),
            vif_details: self.new_vif_details.clone(),
        };
        bs.push(b.clone());
        drop(all);
        if unbound {
            self.set_port(port, host);
        }
        Ok(b)
    }
    fn activate_binding(&self, port: &str, host: &str) -> Result<Binding, api::Error> {
        self.write(format!("PUT {port} {host} activate"))?;
        let mut all = self.bindings.borrow_mut();
        let bs = all.get_mut(port).ok_or_else(|| err(404, "no port"))?;
        if !bs.iter().any(|b| b.host == host) {
            return Err(err(404, "Binding for port could not be found."));
        }
        for b in bs.iter_mut() {
            b.status = if b.host == host { "ACTIVE" } else { "INACTIVE" }.into();
        }
        let b = bs.iter().find(|b| b.host == host).cloned().unwrap();
        drop(all);
        self.set_port(port, host);
        Ok(b)
    }
    fn delete_binding(&self, port: &str, host: &str) -> Result<(), api::Error> {
        self.write(format!("DELETE {port} {host}"))?;
        let mut all = self.bindings.borrow_mut();
        let bs = all.get_mut(port).ok_or_else(|| err(404, "no port"))?;
        let n = bs.len();
        bs.retain(|b| b.host != host);
        if bs.len() == n {
            return Err(err(404, "Binding could not be found."));
        }
        Ok(())
    }
    fn set_host_id(&self, port: &str, host: &str) -> Result<Port, api::Error> {
        self.write(format!("PUT {port} host_id {host}"))?;
        self.set_port(port, host);
        self.port(port)
    }
    fn agents(&self, host: &str) -> Result<Vec<Agent>, api::Error> {
        Ok(self
            .agents
            .iter()
            .filter(|a| a.host == host)
            .cloned()
            .collect())
    }
}

fn args(extra: Value) -> Args {
    let mut v = json!({"state": "active", "instance_uuid": UUID, "host": "cmp2",
        "auth_type": "noauth", "neutron_url": "http://127.0.0.1:9696", "wait_active_s": 0});
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    let (a, _) = parse_args::<Args>(MODULE, &v.to_string()).unwrap();
    check_args(&a).unwrap();
    a
}

fn ctx(check_mode: bool) -> Context {
    Context {
        check_mode,
        diff: true,
        ..Default::default()
    }
}

fn result(o: anyhow::Result<Outcome>) -> Value {
    render(&ctx(false), o, &[]).0
}

#[test]
fn active_moves_every_port_and_a_rerun_changes_nothing() {
    let f = Fake::new(true);
    let v = result(run_with(&f, &args(json!({})), &ctx(false)));
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["api"], "binding-extended");
    let p0 = "3c2b7e9a-1c55-4a0e-9a36-5d1f0f1b2a01";
    let p1 = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f60";
    assert_eq!(
        *f.writes.borrow(),
        [
            format!("PUT {p0} cmp2 activate"),
            format!("DELETE {p0} cmp1"),
            format!("POST {p1} cmp2"),
        ]
    );
    assert_eq!(
        v["ports"][0]["actions"],
        json!(["activate binding on cmp2", "delete binding on cmp1"])
    );
    assert_eq!(
        v["ports"][0]["before"]["bindings"],
        json!(["cmp1:ACTIVE", "cmp2:INACTIVE"])
    );
    assert_eq!(
        v["ports"][0]["after"],
        json!({"host": "cmp2", "bindings": ["cmp2:ACTIVE"]})
    );
    // the unbound port: the new binding came back active, so no activate call
    assert_eq!(
        v["ports"][1]["actions"],
        json!(["create binding on cmp2", "activate binding on cmp2"])
    );
    assert_eq!(
        v["ports"][1]["after"],
        json!({"host": "cmp2", "bindings": ["cmp2:ACTIVE"]})
    );
    assert_eq!(v["diff"]["after"][p0]["host"], "cmp2");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("2 of 2 port(s) moved to cmp2"),
        "{v}"
    );

    let writes = f.writes.borrow().len();
    let v = result(run_with(
        &f,
        &args(json!({"wait_active_s": 5})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], false, "{v}");
    assert_eq!(f.writes.borrow().len(), writes);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("all 2 port(s) already bound to cmp2 only; 2 of 2 ACTIVE on cmp2"),
        "{v}"
    );
}

#[test]
fn check_mode_writes_nothing_and_says_what_would_change() {
    let f = Fake::new(true);
    let v = render(&ctx(true), run_with(&f, &args(json!({})), &ctx(true)), &[]).0;
    assert_eq!(v["changed"], true);
    assert!(f.writes.borrow().is_empty());
    assert_eq!(v["ports"][0]["after"]["bindings"], json!(["cmp2:ACTIVE"]));
    assert!(v["msg"].as_str().unwrap().contains("would be moved"), "{v}");
}

#[test]
fn a_failure_midway_says_what_was_done_and_what_not() {
    let mut f = Fake::new(true);
    f.fail_on = Some("DELETE".into());
    let v = result(run_with(&f, &args(json!({})), &ctx(false)));
    assert_eq!(v["failed"], true);
    let m = v["msg"].as_str().unwrap();
    assert!(
        m.contains("delete binding on cmp1 for port 3c2b7e9a"),
        "{m}"
    );
    assert!(m.contains("HTTP 500: Request Failed"), "{m}");
    assert!(m.contains("1 write(s) were done"), "{m}");
    assert_eq!(
        v["ports"][0]["actions"],
        json!(["activate binding on cmp2"])
    );
    assert_eq!(v["ports"][0]["not_done"], json!(["delete binding on cmp1"]));
    assert_eq!(v["ports"][1]["actions"], json!([]));
    assert_eq!(
        v["ports"][1]["not_done"],
        json!(["create binding on cmp2", "activate binding on cmp2"])
    );
}

#[test]
fn prepared_creates_inactive_bindings_and_undoes_one_neutron_cannot_bind() {
    let f = Fake::new(true);
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared", "host": "cmp3"})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(
        v["ports"][0]["after"]["bindings"],
        json!(["cmp1:ACTIVE", "cmp2:INACTIVE", "cmp3:INACTIVE"])
    );
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared", "host": "cmp3"})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], false, "{v}");

    let mut f = Fake::new(true);
    f.new_vif = "binding_failed".into();
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared", "host": "cmp4"})),
        &ctx(false),
    ));
    let m = v["msg"].as_str().unwrap();
    assert!(m.contains("Neutron cannot bind port 3c2b7e9a-1c55-4a0e-9a36-5d1f0f1b2a01 on cmp4 (vif_type binding_failed): is an L2 agent alive on cmp4"), "{m}");
    assert!(m.contains("the new binding was deleted again"), "{m}");
    let p0 = "3c2b7e9a-1c55-4a0e-9a36-5d1f0f1b2a01";
    assert_eq!(
        *f.writes.borrow(),
        [format!("POST {p0} cmp4"), format!("DELETE {p0} cmp4")]
    );
}

#[test]
fn rolled_back_deletes_the_inactive_binding_and_refuses_an_active_one() {
    let f = Fake::new(true);
    let v = result(run_with(
        &f,
        &args(json!({"state": "rolled_back", "host": "cmp1"})),
        &ctx(false),
    ));
    assert_eq!(v["failed"], true);
    assert!(v["msg"]
        .as_str()
        .unwrap()
        .contains("is active on cmp1: the guest runs there? not rolling back"));
    assert!(f.writes.borrow().is_empty());
    let v = result(run_with(
        &f,
        &args(json!({"state": "rolled_back"})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["ports"][0]["after"]["bindings"], json!(["cmp1:ACTIVE"]));
    let v = result(run_with(
        &f,
        &args(json!({"state": "rolled_back"})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], false, "{v}");
}

#[test]
fn queens_moves_host_id_and_prepared_checks_the_agent() {
    let mut f = Fake::new(false);
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared"})),
        &ctx(false),
    ));
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("no alive L2 agent on cmp2 (agents there: none)"),
        "{v}"
    );
    f.agents = vec![Agent {
        agent_type: "Linux bridge agent".into(),
        host: "cmp2".into(),
        alive: true,
        admin_state_up: true,
    }];
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared"})),
        &ctx(false),
    ));
    assert_eq!(
        (v["failed"].clone(), v["changed"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    let v = result(run_with(&f, &args(json!({})), &ctx(false)));
    assert_eq!(v["api"], "host_id");
    assert_eq!(
        v["ports"][0]["actions"],
        json!(["set binding:host_id to cmp2"])
    );
    assert_eq!(f.writes.borrow().len(), 2);
    let v = result(run_with(&f, &args(json!({})), &ctx(false)));
    assert_eq!(v["changed"], false);
}

#[test]
fn the_wait_names_port_host_and_status() {
    let mut f = Fake::new(true);
    f.wires = false;
    let v = result(run_with(
        &f,
        &args(json!({"wait_active_s": 1})),
        &ctx(false),
    ));
    let m = v["msg"].as_str().unwrap();
    assert!(
        m.contains("port 3c2b7e9a-1c55-4a0e-9a36-5d1f0f1b2a01 is DOWN on cmp2 after 1 s (binding:host_id 'cmp2'): the L2 agent on cmp2 has not wired it"),
        "{m}"
    );
    assert_eq!(v["ports"][0]["status"], "DOWN");
}

#[test]
fn no_ports_is_nothing_to_do() {
    let f = Fake::new(true);
    let v = result(run_with(
        &f,
        &args(json!({"instance_uuid": "00000000-0000-4000-8000-00000000abcd"})),
        &ctx(false),
    ));
    assert_eq!(v["changed"], false);
    assert!(
        v["msg"].as_str().unwrap().contains("has no Neutron port"),
        "{v}"
    );
}

#[test]
fn audit_reports_and_fixes_mismatches() {
    let f = Fake::new(true);
    let a = |fix: bool| {
        args(
            json!({"state": "audited", "instance_uuid": null, "host": null, "fix": fix,
            "guests": {UUID: "cmp1", "00000000-0000-4000-8000-00000000abcd": "cmp9"}}),
        )
    };
    let v = result(run_with(&f, &a(false), &ctx(false)));
    assert_eq!(v["changed"], false);
    assert_eq!(v["ports_checked"], 2);
    assert_eq!(
        v["mismatches"],
        json!([{"port_id": "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f60", "instance_uuid": UUID,
                "bound_host": "", "running_host": "cmp1", "status": "DOWN", "fixed": false}])
    );
    let v = render(&ctx(true), run_with(&f, &a(true), &ctx(true)), &[]).0;
    assert_eq!(v["changed"], true);
    assert_eq!(v["mismatches"][0]["fixed"], false); // check mode moved nothing
    assert!(f.writes.borrow().is_empty());
    let v = result(run_with(&f, &a(true), &ctx(false)));
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["mismatches"][0]["fixed"], true);
    assert_eq!(v["ports"][0]["after"]["host"], "cmp1");
    let v = result(run_with(&f, &a(false), &ctx(false)));
    assert_eq!(v["mismatches"], json!([]));
}

#[test]
fn audit_asks_for_ports_in_chunks() {
    let f = Fake::new(true);
    let uuids: Vec<String> = (0..120)
        .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
        .collect();
    assert!(ports_of(&f, &uuids).unwrap().is_empty()); // the fake asserts <= 50 per call
}

#[test]
fn arguments_are_checked_across_fields() {
    let bad = |v: Value| {
        let (a, _) = parse_args::<Args>(MODULE, &v.to_string()).unwrap();
        check_args(&a).unwrap_err().to_string()
    };
    let e = bad(json!({"state": "active", "instance_uuid": UUID, "host": "h"}));
    assert!(
        e.contains("exactly one of os_auth, kolla_config_dir, auth_type=noauth"),
        "{e}"
    );
    let e =
        bad(json!({"state": "active", "instance_uuid": UUID, "host": "h", "auth_type": "noauth"}));
    assert!(e.contains("noauth needs neutron_url"), "{e}");
    let e = bad(
        json!({"state": "active", "host": "h", "auth_type": "noauth", "neutron_url": "http://n:9696"}),
    );
    assert!(
        e.contains("state=active needs instance_uuid and host"),
        "{e}"
    );
    let e = bad(
        json!({"state": "prepared", "instance_uuid": "nope", "host": "h", "auth_type": "noauth", "neutron_url": "http://n:9696"}),
    );
    assert!(e.contains("is not a uuid"), "{e}");
    let e = bad(
        json!({"state": "audited", "guests": {"x": "h"}, "auth_type": "noauth", "neutron_url": "http://n:9696"}),
    );
    assert!(e.contains("guests: 'x' is not a uuid"), "{e}");
    let e = parse_args::<Args>(MODULE, r#"{"state": "active", "timeout_s": 0}"#).unwrap_err();
    assert!(
        e.msg.contains("argument 'timeout_s': must be at least 1"),
        "{}",
        e.msg
    );
    let e =
        parse_args::<Args>(MODULE, r#"{"state": "active", "wait_active_s": "9999"}"#).unwrap_err();
    assert!(
        e.msg
            .contains("9999 seconds is more than the 3600 accepted"),
        "{}",
        e.msg
    );
    let e = parse_args::<Args>(MODULE, r#"{"state": "moved"}"#).unwrap_err();
    assert!(e.msg.contains("argument 'state'"), "{}", e.msg);
    let (a, _) = parse_args::<Args>(
        MODULE,
        r#"{"state": "active", "os_auth": {"auth_url": "http://ks:5000", "username": "admin", "password": "pw1", "project_name": "admin"}}"#,
    )
    .unwrap();
    assert_eq!(a.secrets(), ["pw1"]);
    assert_eq!(a.os_auth.unwrap().interface, "internal");
    assert_eq!(
        (a.timeout_s, a.wait_active_s, a.validate_certs),
        (30, 60, true)
    );
}

#[test]
fn secrets_read_at_run_time_are_scrubbed_from_errors() {
    let secrets = vec!["gAAAAAtoken".to_string(), "kolla-pw".to_string()];
    let e = anyhow::Error::new(
        Failure::new("x gAAAAAtoken y").with("ports", json!([{"a": "kolla-pw"}])),
    );
    let v = render(&ctx(false), Err(scrub_error(e, &secrets)), &[]).0;
    assert!(
        !v.to_string().contains("gAAAAAtoken") && !v.to_string().contains("kolla-pw"),
        "{v}"
    );
    let e = anyhow::anyhow!("HTTP 401: token gAAAAAtoken expired");
    let v = render(&ctx(false), Err(scrub_error(e, &secrets)), &[]).0;
    assert_eq!(v["msg"], "HTTP 401: token ******** expired");
}

#[test]
fn the_schema_documents_every_argument() {
    let schema = serde_json::to_value(schemars::schema_for!(Args)).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for (k, v) in props {
        assert!(
            v.get("description").is_some(),
            "argument {k} has no doc comment"
        );
    }
    assert_eq!(schema["required"], json!(["state"]));
    let names = crate::ansible::accepted_args::<Args>();
    assert_eq!(
        names,
        [
            "auth_type",
            "cacert",
            "fix",
            "guests",
            "host",
            "instance_uuid",
            "kolla_config_dir",
            "neutron_url",
            "os_auth",
            "state",
            "timeout_s",
            "validate_certs",
            "wait_active_s"
        ]
    );
}

/// A one-shot HTTP server on loopback: answers each connection with the next canned response
/// and hands back the requests it read (head and body).
fn serve(responses: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for r in responses {
            let (s, _) = l.accept().unwrap();
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                rd.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            rd.read_exact(&mut body).unwrap();
            seen.push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
            let mut s = s;
            s.write_all(r.as_bytes()).unwrap();
        }
        seen
    });
    (addr, h)
}

fn http_answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

#[test]
fn keystone_then_neutron_over_http_with_the_token_in_a_header_only() {
    let token = include_str!("fixtures/token.json");
    let (ks, ks_seen) = serve(vec![http_answer(
        "201 Created",
        "X-Subject-Token: gAAAAAsecrettoken\r\n",
        token,
    )]);
    let (nt, nt_seen) = serve(vec![
        http_answer("200 OK", "", include_str!("fixtures/extensions.json")),
        http_answer("200 OK", "", r#"{"ports": []}"#),
    ]);
    let a = args(json!({"auth_type": null, "neutron_url": nt,
        "os_auth": {"auth_url": format!("{ks}/v3"), "username": "admin",
                    "password": "pw-Hunter2", "project_name": "admin"}}));
    let client = connect(&a).unwrap();
    assert_eq!(client.base, nt);
    let v = result(run_with(&client, &a, &ctx(false)));
    assert_eq!(v["changed"], false, "{v}");
    assert!(!v.to_string().contains("gAAAAAsecrettoken"));
    let ks_req = ks_seen.join().unwrap();
    assert!(
        ks_req[0].starts_with("POST /v3/auth/tokens "),
        "{}",
        ks_req[0]
    );
    assert!(ks_req[0].contains("\"password\":\"pw-Hunter2\""));
    let nt_req = nt_seen.join().unwrap();
    assert!(
        nt_req[0].starts_with("GET /v2.0/extensions "),
        "{}",
        nt_req[0]
    );
    assert!(
        nt_req[1].starts_with(&format!("GET /v2.0/ports?device_id={UUID} ")),
        "{}",
        nt_req[1]
    );
    assert!(nt_req[1]
        .to_ascii_lowercase()
        .contains("x-auth-token: gaaaaasecrettoken"));
}

#[test]
fn a_keystone_answer_echoing_the_password_is_scrubbed() {
    let (ks, _seen) = serve(vec![http_answer(
        "401 Unauthorized",
        "",
        r#"{"error": {"code": 401, "message": "bad password pw-from-kolla for admin"}}"#,
    )]);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("admin-openrc.sh"),
        format!("export OS_AUTH_URL='{ks}'\nexport OS_PASSWORD='pw-from-kolla'\n"),
    )
    .unwrap();
    let a = args(json!({"auth_type": null, "neutron_url": null,
        "kolla_config_dir": d.path()}));
    let e = connect(&a).err().unwrap().to_string();
    assert!(
        e.contains("HTTP 401: bad password ******** for admin"),
        "{e}"
    );
    assert!(!e.contains("pw-from-kolla"), "{e}");
}

#[test]
fn prepared_refuses_ovs_hybrid_plug_and_deletes_the_binding_it_made() {
    let mut f = Fake::new(true);
    f.new_vif_details = json!({"port_filter": true, "ovs_hybrid_plug": true});
    let v = result(run_with(
        &f,
        &args(json!({"state": "prepared", "host": "cmp4"})),
        &ctx(false),
    ));
    assert_eq!(v["failed"], true, "{v}");
    let m = v["msg"].as_str().unwrap();
    assert!(
        m.contains("hybrid plug on cmp4") && m.contains("Nothing was migrated"),
        "{m}"
    );
    assert!(m.contains("the new binding was deleted again"), "{m}");
}

#[test]
fn linux_bridge_names_follow_nova() {
    let net = "4bbc0f2e-50a0-4f49-a5fd-6bc5daffb092";
    assert_eq!(api::linux_bridge_name(net, &Value::Null), "brq4bbc0f2e-50");
    assert_eq!(
        api::linux_bridge_name(net, &json!({"bridge_name": "br-phys"})),
        "br-phys"
    );
}

#[test]
fn over_http_the_activation_answer_is_unwrapped_and_noauth_names_the_project() {
    // What neutron-server 14.4.2 answered in the lab: POST bindings wraps the binding, the
    // activation does not.
    let (nt, seen) = serve(vec![
        http_answer(
            "201 Created",
            "",
            r#"{"binding": {"host": "cmp2", "vif_type": "bridge", "vnic_type": "normal", "status": "INACTIVE", "profile": {}, "vif_details": {"port_filter": true}}}"#,
        ),
        http_answer(
            "200 OK",
            "",
            r#"{"host": "cmp2", "vif_type": "bridge", "vnic_type": "normal", "status": "ACTIVE", "profile": {}, "vif_details": {"port_filter": true}}"#,
        ),
    ]);
    let client = Client {
        http: api::Http::new(&api::Transport {
            timeout: std::time::Duration::from_secs(5),
            cacert: None,
            validate_certs: true,
        })
        .unwrap(),
        base: nt,
        noauth: true,
    };
    let port = Port {
        id: "p1".into(),
        project_id: "6c1a9e10".into(),
        ..Default::default()
    };
    let b = client.create_binding(&port, "cmp2").unwrap();
    assert_eq!((b.host.as_str(), b.status.as_str()), ("cmp2", "INACTIVE"));
    let b = client.activate_binding("p1", "cmp2").unwrap();
    assert_eq!((b.host.as_str(), b.status.as_str()), ("cmp2", "ACTIVE"));
    let req = seen.join().unwrap();
    assert!(
        req[0].starts_with("POST /v2.0/ports/p1/bindings "),
        "{}",
        req[0]
    );
    assert!(req[0].contains(r#""project_id":"6c1a9e10""#), "{}", req[0]);
    assert!(
        req[1].starts_with("PUT /v2.0/ports/p1/bindings/cmp2/activate "),
        "{}",
        req[1]
    );
}
