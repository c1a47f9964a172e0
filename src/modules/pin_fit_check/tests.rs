use super::*;
use crate::model::domain::fixtures::pinned;
use crate::model::topology::fixtures::caps;
use crate::nova::conf;
use serde_json::json;

const ISO: &str = "6c1a9e10-0000-4000-8000-0000000000c1";

/// One cell of 2 cores x 2 threads: core 0 is pCPUs {0, 2}, core 1 is {1, 3}.
fn smt_host(name: &str, guests: &[String]) -> NumaFacts {
    let c = conf::parse("[DEFAULT]\n", None).unwrap();
    let doms: Vec<(String, String)> = guests
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("g{i}.xml"), g.clone()))
        .collect();
    facts::from_saved(name, &caps(1, 2, 2, 8192, &[]), &doms, &c).unwrap()
}

/// The drain of one 1-vCPU guest from `src` to `dst`, where another guest holds pCPU 0: half
/// of core 0 is taken, core 1 is free.
fn drain_args() -> DrainArgs {
    DrainArgs {
        sources: vec![smt_host("src", &[pinned("iso", ISO, &[1], None, 0, 512)])],
        candidates: vec![smt_host(
            "dst",
            &[pinned(
                "other",
                "6c1a9e10-0000-4000-8000-0000000000c2",
                &[0],
                None,
                0,
                512,
            )],
        )],
        guests: vec![],
        thread_policy: None,
        max_parallel: 2,
        max_parallel_per_dest: 1,
    }
}

/// Its rows as Nova 19.3.2 keeps them: the flavor says dedicated only; the numa_topology's cell
/// carries the isolate the guest was placed with (from the image, say).
fn db_rows() -> Policies {
    let numa = json!({"nova_object.name": "InstanceNUMATopology", "nova_object.namespace": "nova",
        "nova_object.version": "1.3",
        "nova_object.data": {"cells": [{"nova_object.name": "InstanceNUMACell",
            "nova_object.namespace": "nova", "nova_object.version": "1.4",
            "nova_object.data": {"id": 0, "cpuset": [0], "memory": 512, "pagesize": null,
                "cpu_topology": null, "cpu_pinning_raw": {"0": 1}, "cpu_policy": "dedicated",
                "cpu_thread_policy": "isolate", "cpuset_reserved": null},
            "nova_object.changes": ["cpu_thread_policy"]}], "emulator_threads_policy": null},
        "nova_object.changes": ["cells"]})
    .to_string();
    let flavor = json!({"cur": {"nova_object.name": "Flavor", "nova_object.namespace": "nova",
        "nova_object.version": "1.2",
        "nova_object.data": {"id": 1, "name": "pinned.1c", "memory_mb": 512, "vcpus": 1,
            "extra_specs": {"hw:cpu_policy": "dedicated"}}}, "old": null, "new": null})
    .to_string();
    let p = policy::guest_policy(Some(&numa), Some(&flavor), &Default::default());
    [(ISO.to_string(), p)].into_iter().collect()
}

fn the_move(o: &Outcome) -> &serde_json::Value {
    &o.fields["plan"]["moves"][0]
}

#[test]
fn an_isolate_guest_known_from_novas_db_gets_a_whole_core() {
    let d = drain_args();
    let opts = FitOptions::default();
    // Without the DB the policy is assumed prefer: the free thread of the partly used core.
    let o = drain_plan(&d, &opts, None);
    let m = the_move(&o);
    assert_eq!(m["placement"]["cells"][0]["vcpu_pins"]["0"], 2, "{o:?}");
    assert_eq!(
        (&m["thread_policy"], &m["policy_source"]),
        (&json!("prefer"), &json!("assumed"))
    );
    assert!(o.msg.contains("0 from Nova's DB, 0 from drain.thread_policy, 1 assumed prefer (libvirt does not record them; give db_connection"), "{}", o.msg);
    // With the DB's isolate: a whole free core, its sibling left empty.
    let db = db_rows();
    let o = drain_plan(&d, &opts, Some(&db));
    let m = the_move(&o);
    let pin = &m["placement"]["cells"][0]["vcpu_pins"]["0"];
    assert!(*pin == 1 || *pin == 3, "{o:?}");
    assert_eq!(
        (&m["thread_policy"], &m["policy_source"]),
        (&json!("isolate"), &json!("nova_db"))
    );
    assert_eq!(m["placement"]["cells"][0]["thread_policy"], "isolate");
    assert!(
        o.msg.ends_with(
            "thread policies: 1 from Nova's DB, 0 from drain.thread_policy, 0 assumed prefer"
        ),
        "{}",
        o.msg
    );
    assert_eq!(o.fields["policy_notes"], json!([]));
    // The DB wins over drain.thread_policy, which is for the guests it does not know.
    let mut d = drain_args();
    d.thread_policy = Some(ThreadPolicy::Prefer);
    let o = drain_plan(&d, &opts, Some(&db));
    assert_eq!(the_move(&o)["policy_source"], "nova_db");
}

#[test]
fn where_the_db_does_not_tell_the_argument_or_the_assumption_is_used_and_said() {
    let d = drain_args();
    let g = &d.sources[0].guests[0];
    let empty = Policies::new();
    let c = choose(g, Some(&empty), Some(ThreadPolicy::Require));
    assert_eq!(
        (c.policy, c.source, c.note.as_deref()),
        (
            Some(ThreadPolicy::Require),
            PolicySource::Argument,
            Some("Nova's database has no live instance with its uuid")
        )
    );
    let c = choose(g, None, None);
    assert_eq!(
        (c.policy, c.source, c.note),
        (None, PolicySource::Assumed, None)
    );
    // A DB that records the guest unpinned does not tell its thread policy.
    let flavor = json!({"cur": {"nova_object.data": {"extra_specs": {}}}}).to_string();
    let p = policy::guest_policy(None, Some(&flavor), &Default::default());
    let db: Policies = [(ISO.to_string(), p)].into_iter().collect();
    let c = choose(g, Some(&db), None);
    assert_eq!(c.source, PolicySource::Assumed);
    assert!(c.note.unwrap().contains("records it unpinned"));
    let o = drain_plan(&d, &FitOptions::default(), Some(&db));
    assert_eq!(o.fields["policy_notes"][0]["uuid"], ISO);
    assert!(
        o.msg
            .ends_with("1 assumed prefer (policy_notes says why Nova's DB did not tell)"),
        "{}",
        o.msg
    );
}

#[test]
fn db_arguments_are_checked_and_the_url_is_a_secret() {
    let mut a: Args = serde_json::from_value(json!({
        "guest": "iso",
        "db_connection": "mysql+pymysql://nova:hunter2@db/nova",
        "db_nova_conf": "/etc/kolla/nova-conductor/nova.conf"
    }))
    .unwrap();
    assert!(a.secrets().contains(&"hunter2".to_string()));
    let e = db_creds(&a).unwrap_err().to_string();
    assert!(e.contains("not both"), "{e}");
    a.db_nova_conf = None;
    assert_eq!(db_creds(&a).unwrap().unwrap().host, "db");
    a.db_connection = Some("postgresql://nova:hunter2@db/nova".into());
    let e = db_creds(&a).unwrap_err().to_string();
    assert!(
        e.starts_with("db_connection: ") && !e.contains("hunter2"),
        "{e}"
    );
    a.db_connection = None;
    a.passwords_file = Some("/etc/kolla/passwords.yml".into());
    assert!(db_creds(&a)
        .unwrap_err()
        .to_string()
        .contains("goes with db_nova_conf"));
    a.passwords_file = None;
    assert!(db_creds(&a).unwrap().is_none());
}

#[test]
fn nothing_goes_on_the_sibling_of_a_resident_the_db_records_isolate() {
    let d = drain_args();
    // The DB knows only the resident (pCPU 0), as isolate: pCPU 2, its sibling, is taken too.
    let mut db = db_rows();
    let p = db.remove(ISO).unwrap();
    db.insert("6c1a9e10-0000-4000-8000-0000000000c2".into(), p);
    let o = drain_plan(&d, &FitOptions::default(), Some(&db));
    let m = the_move(&o);
    let pin = &m["placement"]["cells"][0]["vcpu_pins"]["0"];
    assert!(*pin == 1 || *pin == 3, "{o:?}");
    assert_eq!(m["policy_source"], "assumed");
    assert_eq!(
        o.fields["policy_notes"][0]["note"],
        "Nova's database has no live instance with its uuid"
    );
}
