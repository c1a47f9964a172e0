//! A stable-toolchain fuzz pass run by `cargo test`: thousands of deterministic mutations of
//! real documents through every parser. `fuzz/` holds the libFuzzer targets for longer runs
//! (tests/fuzz.sh); this keeps a no-panic guarantee in the plain test suite too.
use numa_repin::model::{cpuset, domain, topology};
use numa_repin::{facts, fit, limits, nova};
use std::panic;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "<",
    ">",
    "/>",
    "</cell>",
    "'",
    "\"",
    "&",
    "&amp;",
    "&#x0;",
    "<!DOCTYPE a [<!ENTITY e 'x'>]>",
    "-",
    ",",
    "^",
    "99999999999",
    "-1",
    "0-",
    "\u{0}",
    "é",
    "<![CDATA[",
    "]]>",
    "=",
    "\n[DEFAULT]\n",
    "vcpu_pin_set=",
    "node:0,size:",
    "<cell id='0'>",
    "4294967295",
    "18446744073709551615",
    "size='0'",
    "unit='KB'",
    "unit='EB'",
];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for _ in 0..1 + rng.below(6) {
        let pos = rng.below(s.len() + 1);
        match rng.below(4) {
            0 if !s.is_empty() => {
                let end = (pos + rng.below(40)).min(s.len());
                s.drain(pos.min(end)..end);
            }
            1 => {
                let t: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                s.splice(pos..pos, t);
            }
            2 if !s.is_empty() => {
                let len = s.len();
                s.truncate(rng.below(len));
            }
            _ => {
                let a = rng.below(s.len().max(1));
                let b = (a + rng.below(200)).min(s.len());
                let chunk: Vec<char> = s[a..b].to_vec();
                s.splice(pos.min(s.len())..pos.min(s.len()), chunk);
            }
        }
    }
    s.into_iter().collect()
}

fn no_panic(what: &str, input: &str, f: impl Fn(&str) + panic::RefUnwindSafe) {
    if let Err(e) = panic::catch_unwind(|| f(input)) {
        panic!("{what} panicked on input {input:?}: {e:?}");
    }
}

#[test]
fn parsers_never_panic_on_mutated_input() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/tests/fixtures/{p}")).unwrap();
    let caps = read("saved/caps-2s12c2t.xml");
    let dom = read("saved/db-1.xml");
    let conf = read("saved/nova.conf");
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let rounds = 20000;
    for _ in 0..rounds {
        no_panic("capabilities", &mutate(&mut rng, &caps), |s| {
            let _ = topology::parse_capabilities(s);
        });
        no_panic("domain", &mutate(&mut rng, &dom), |s| {
            if let Ok(g) = domain::parse_guest(s) {
                let _ = fit::GuestTopology::from_guest(&g, None);
            }
        });
        no_panic("nova.conf", &mutate(&mut rng, &conf), |s| {
            let _ = nova::conf::parse(s, None);
        });
        no_panic("cpu spec", &mutate(&mut rng, "0-3,^2,8-11"), |s| {
            if let Ok(set) = cpuset::parse_spec(s) {
                assert_eq!(cpuset::parse_spec(&cpuset::format_spec(&set)).unwrap(), set);
            }
        });
    }
}

#[test]
fn fit_never_panics_on_random_hosts_and_requests() {
    let mut rng = Rng(42);
    let specs = [
        "hw:cpu_policy",
        "hw:cpu_thread_policy",
        "hw:numa_nodes",
        "hw:mem_page_size",
        "hw:emulator_threads_policy",
        "hw:numa_cpus.0",
        "hw:numa_mem.0",
        "hw:numa_cpus.1",
        "hw:numa_mem.1",
    ];
    let values = [
        "dedicated",
        "shared",
        "isolate",
        "require",
        "prefer",
        "2",
        "0",
        "-1",
        "large",
        "any",
        "small",
        "2048",
        "1GB",
        "0-1",
        "1",
        "512",
        "x",
        "",
        "4294967295",
        "1099511627776",
    ];
    for _ in 0..20000 {
        let cells = (0..1 + rng.below(4))
            .map(|i| {
                let cpus: Vec<u32> = (0..rng.below(9) as u32).map(|c| i as u32 * 8 + c).collect();
                fit::HostCell {
                    id: i as u32,
                    siblings: cpus
                        .chunks(1 + rng.below(3))
                        .map(|c| c.iter().copied().collect())
                        .collect(),
                    pinned_cpus: cpus.iter().copied().filter(|_| rng.below(3) == 0).collect(),
                    cpuset: cpus.iter().copied().collect(),
                    memory: rng.below(8192) as u64,
                    memory_usage: rng.below(8192) as u64,
                    mempages: vec![
                        fit::MemPages {
                            size_kb: 4,
                            total: rng.below(1 << 21) as u64,
                            used: rng.below(1000) as u64,
                            reserved: 0,
                        },
                        fit::MemPages {
                            size_kb: 2048,
                            total: rng.below(64) as u64,
                            used: rng.below(64) as u64,
                            reserved: rng.below(8) as u64,
                        },
                    ],
                    cpu_usage: None,
                }
            })
            .collect();
        let host = fit::HostState {
            name: "h".into(),
            cells,
        };
        let mut req = fit::Request {
            vcpus: match rng.below(100) {
                0 => u32::MAX,
                1 => limits::MAX_VCPUS + 1,
                n => (n % 10) as u32,
            },
            memory_mb: rng.below(4096) as u64,
            ..Default::default()
        };
        for _ in 0..rng.below(5) {
            req.extra_specs.insert(
                specs[rng.below(specs.len())].into(),
                serde_json::json!(values[rng.below(values.len())]),
            );
        }
        let r = panic::catch_unwind(|| fit::fit_request(&host, &req, &fit::FitOptions::default()));
        let out = r.unwrap_or_else(|_| panic!("fit panicked on {host:?} {req:?}"));
        // Whatever it returns must be internally consistent.
        if let Ok(fit::Decision::Fits(p)) = out {
            let topo = fit::constraints(&req).unwrap().unwrap();
            fit::validate(&host, &topo, &p)
                .unwrap_or_else(|e| panic!("invalid placement {e}: {host:?} {req:?} {p:?}"));
        }
    }
}

/// libvirt RPC replies: mutated packets and payloads through the framing and the XDR decoders
/// never panic (a hostile or broken daemon gets an error, not a crash or a huge allocation).
#[test]
fn libvirt_wire_decoders_never_panic_on_mutated_bytes() {
    use numa_repin::io::libvirt::proc::{RemoteDomain, TypedParam, Value};
    use numa_repin::io::libvirt::wire::{self, Dec, Enc, Header};
    let mut e = Enc::new();
    RemoteDomain {
        name: "vm-taken".into(),
        uuid: [7; 16],
        id: 3,
    }
    .encode(&mut e);
    for p in [
        TypedParam::new("time_elapsed", Value::ULLong(12)),
        TypedParam::new("destination_xml", Value::String("<domain/>".into())),
        TypedParam::new("d", Value::Double(1.0)),
    ] {
        p.encode(&mut e);
    }
    let h = Header {
        prog: wire::REMOTE_PROGRAM,
        vers: wire::REMOTE_VERSION,
        proc_: 298,
        mtype: wire::REPLY,
        serial: 1,
        status: wire::STATUS_OK,
    };
    let base = wire::frame(&h, &e.buf);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            if b.is_empty() {
                break;
            }
            let i = rng.below(b.len());
            match rng.below(3) {
                0 => b[i] = rng.next() as u8,
                1 => b.truncate(i),
                _ => b.splice(i..i, [0xff, 0xff, 0xff, 0xff]).for_each(drop),
            }
        }
        let r = panic::catch_unwind(|| {
            let _ = wire::read_packet(&mut b.as_slice());
            let body = b.get(28..).unwrap_or(&[]);
            let mut d = Dec::new(body);
            let _ = RemoteDomain::decode(&mut d);
            for _ in 0..3 {
                let _ = TypedParam::decode(&mut d);
            }
            let _ = Dec::new(body).count(1 << 20, 4);
        });
        assert!(r.is_ok(), "panic on {b:?}");
    }
}

/// Each measured out-of-bounds input (issue 15) fails with an error naming what is wrong, through
/// the library, without a panic and before anything is sized from it.
#[test]
fn out_of_bounds_inputs_are_refused_not_allocated() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/tests/fixtures/{p}")).unwrap();
    let caps = read("saved/caps-2s12c2t.xml");
    let dom = read("saved/db-1.xml");
    let request = |vcpus: u32, specs: serde_json::Value| fit::Request {
        vcpus,
        memory_mb: 4096,
        extra_specs: serde_json::from_value(specs).unwrap(),
        ..Default::default()
    };
    type Check = Box<dyn Fn() -> Result<(), String> + panic::RefUnwindSafe>;
    let cases: Vec<(&str, Check, &str)> = vec![
        (
            "vcpus 2^32-1",
            Box::new(move || {
                fit::constraints(&request(
                    u32::MAX,
                    serde_json::json!({"hw:cpu_policy": "dedicated"}),
                ))
                .map(drop)
                .map_err(|e| e.to_string())
            }),
            "vcpus",
        ),
        (
            "hw:numa_nodes 2^32-1",
            Box::new(move || {
                fit::constraints(&request(
                    4,
                    serde_json::json!({"hw:numa_nodes": "4294967295"}),
                ))
                .map(drop)
                .map_err(|e| e.to_string())
            }),
            "hw:numa_nodes",
        ),
        (
            "capabilities <pages size='0'>",
            {
                let c = caps.replacen("size='2048'", "size='0'", 1);
                assert_ne!(c, caps);
                Box::new(move || topology::parse_capabilities(&c).map(drop))
            },
            "page size of 0",
        ),
        (
            "domain <page size='0'>",
            {
                let d = dom.replacen("<page size='1048576'", "<page size='0'", 1);
                assert_ne!(d, dom);
                Box::new(move || domain::parse_guest(&d).map(drop))
            },
            "page size of 0",
        ),
        (
            "domain <currentMemory unit='KB'> beyond u64 bytes",
            {
                let d = dom.replacen(
                    "<currentMemory unit='KiB'>2097152",
                    "<currentMemory unit='KB'>18446744073709551615",
                    1,
                );
                assert_ne!(d, dom);
                Box::new(move || domain::parse_guest(&d).map(drop))
            },
            "memory value 18446744073709551615 KB",
        ),
        (
            "facts JSON with a page size of 0",
            {
                let conf = nova::conf::ComputeConf::default();
                let f = facts::from_saved("h", &caps, &[], &conf).unwrap();
                let mut v = serde_json::to_value(&f).unwrap();
                v["cells"][0]["pages"][0]["size_kb"] = serde_json::json!(0);
                v["cells"][1]["cpus"][0]["id"] = serde_json::json!(u32::MAX);
                Box::new(move || {
                    let f: facts::NumaFacts =
                        serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
                    f.check("host_facts").map_err(|e| e.to_string())
                })
            },
            "host_facts.cells[0].pages[0].size_kb",
        ),
    ];
    for (what, f, want) in cases {
        match panic::catch_unwind(&f) {
            Err(_) => panic!("{what}: panicked"),
            Ok(Ok(())) => panic!("{what}: accepted"),
            Ok(Err(e)) => assert!(e.contains(want), "{what}: {e}"),
        }
    }
}
