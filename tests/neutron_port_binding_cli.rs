//! The `neutron_port_binding` binary as Ansible runs it: `--schema`, argument errors, and a
//! check-mode run (GETs only) against a Neutron stand-in on loopback (noauth).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_neutron_port_binding");

fn run_with_args(args: &Value) -> (Value, i32) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("args.json");
    std::fs::write(&p, args.to_string()).unwrap();
    let out = Command::new(BIN).arg(&p).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

#[test]
fn schema_lists_every_argument_with_its_doc() {
    let out = Command::new(BIN).arg("--schema").output().unwrap();
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["required"], json!(["state"]));
    assert_eq!(
        s["definitions"]["State"]["enum"],
        json!(["prepared", "active", "rolled_back", "audited"])
    );
    for (k, v) in s["properties"].as_object().unwrap() {
        assert!(v["description"].is_string(), "{k}");
    }
}

#[test]
fn wrong_arguments_fail_as_one_json_result() {
    let (v, code) = run_with_args(&json!({"state": "active", "hots": "cmp2"}));
    assert_eq!(code, 1);
    let m = v["msg"].as_str().unwrap();
    assert!(m.contains("unsupported argument(s): hots"), "{m}");
    let (v, _) = run_with_args(
        &json!({"state": "active", "instance_uuid": "x", "host": "h",
        "os_auth": {"auth_url": "http://127.0.0.1:9", "username": "u", "password": "Pw-s3cret",
                    "project_name": "p"}}),
    );
    assert!(v["msg"].as_str().unwrap().contains("not a uuid"), "{v}");
    assert!(!v.to_string().contains("Pw-s3cret"));
}

#[test]
fn check_mode_only_reads() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let uuid = "6c1a9e10-0000-4000-8000-000000000002";
    let server = std::thread::spawn(move || {
        let mut methods = Vec::new();
        for _ in 0..3 {
            let (s, _) = l.accept().unwrap();
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            rd.read_line(&mut first).unwrap();
            let mut len = 0;
            loop {
                let mut line = String::new();
                rd.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; len];
            rd.read_exact(&mut body).unwrap();
            let body = if first.contains("/extensions") {
                r#"{"extensions": [{"alias": "binding-extended"}]}"#.to_string()
            } else if first.contains("/bindings") {
                r#"{"bindings": [{"host": "cmp1", "vif_type": "ovs", "vnic_type": "normal", "status": "ACTIVE"}]}"#.to_string()
            } else {
                format!(
                    r#"{{"ports": [{{"id": "p1", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "device_id": "{uuid}", "status": "ACTIVE", "binding:host_id": "cmp1"}}]}}"#
                )
            };
            let mut s = s;
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            methods.push(
                first
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        methods
    });
    let (v, code) = run_with_args(
        &json!({"state": "active", "instance_uuid": uuid, "host": "cmp2",
        "auth_type": "noauth", "neutron_url": url, "_ansible_check_mode": true, "_ansible_diff": true}),
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["changed"], true);
    assert_eq!(v["api"], "binding-extended");
    assert_eq!(
        v["ports"][0]["actions"],
        json!([
            "create binding on cmp2",
            "activate binding on cmp2",
            "delete binding on cmp1"
        ])
    );
    assert_eq!(
        v["diff"]["after"]["p1"],
        json!({"host": "cmp2", "bindings": ["cmp2:ACTIVE"]})
    );
    let methods = server.join().unwrap();
    assert_eq!(
        methods,
        [
            "GET /v2.0/extensions".to_string(),
            format!("GET /v2.0/ports?device_id={uuid}"),
            "GET /v2.0/ports/p1/bindings".to_string()
        ]
    );
}
