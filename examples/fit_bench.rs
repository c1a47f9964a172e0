//! Run our fit engine over generated cases (tests/nova_equiv/gen_cases.py) and time it.
//!
//!     cargo run --release --example fit_bench -- cases.jsonl [--repeat N] [--breakdown] [--strict-memory] [-o out.jsonl]
//!
//! Prints one JSON line per case in the format of tests/nova_equiv/nova_fit.py (so
//! check_placement.py and compare.py read both), with "ns": the mean time of one decision
//! (constraints + fit, from the parsed request and host) over N repeats (default 200).
//! With --breakdown also "constraints_ns" (request parsing alone) and "fit_topology_ns" (the
//! fit alone, NUMA requests only). A summary goes to stderr. FitOptions default to Nova's semantics (strict_memory off: Nova
//! lets unpinned NUMA guests overcommit memory when no limits are given).

use numa_repin::fit::{self, Decision, FitOptions, HostState, Placement, Request};
use serde::Deserialize;
use serde_json::{json, Value};
use std::hint::black_box;
use std::io::{BufRead, BufWriter, Write};
use std::time::Instant;

#[derive(Deserialize)]
struct Case {
    id: u64,
    host: HostState,
    request: Request,
}

fn placement_json(p: &Placement) -> Value {
    let cells: Vec<Value> = p
        .cells
        .iter()
        .map(|c| {
            let pins: Value = if p.dedicated {
                Value::Object(c.vcpu_pins.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
            } else {
                Value::Null
            };
            json!({
                "guest_cell": c.guest_cell,
                "host_cell": c.host_cell,
                "vcpus": c.vcpus,
                "pins": pins,
                "cpuset_reserved": if c.cpuset_reserved.is_empty() { Value::Null } else { json!(c.cpuset_reserved) },
                "pagesize": c.pagesize_kb,
                "memory": c.memory_mb,
                "cpu_thread_policy": c.thread_policy,
            })
        })
        .collect();
    Value::Array(cells)
}

fn decide_json(id: u64, d: &Result<Decision, fit::RequestError>) -> Value {
    match d {
        Err(e) => {
            json!({"id": id, "numa": false, "fits": false, "error": e.to_string(), "cells": []})
        }
        Ok(Decision::NotNuma) => {
            json!({"id": id, "numa": false, "fits": true, "error": null, "cells": []})
        }
        Ok(Decision::NoFit(r)) => {
            json!({"id": id, "numa": true, "fits": false, "error": null, "cells": [], "msg": r.msg, "reasons": r.reasons})
        }
        Ok(Decision::Fits(p)) => {
            json!({"id": id, "numa": true, "fits": true, "error": null, "cells": placement_json(p),
                                         "emulator_pins": p.emulator_pins})
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut repeat: u32 = 200;
    let mut out_path = None;
    let mut opts = FitOptions {
        strict_memory: false,
    };
    let mut breakdown = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--repeat" => {
                i += 1;
                repeat = args
                    .get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| die("--repeat needs a number"));
            }
            "-o" => {
                i += 1;
                out_path = Some(
                    args.get(i)
                        .cloned()
                        .unwrap_or_else(|| die("-o needs a path")),
                );
            }
            "--strict-memory" => opts.strict_memory = true,
            "--breakdown" => breakdown = true,
            "-h" | "--help" => {
                eprintln!("usage: fit_bench <cases.jsonl|-> [--repeat N] [--breakdown] [--strict-memory] [-o out.jsonl]");
                return;
            }
            a => path = Some(a.to_string()),
        }
        i += 1;
    }
    let path = path.unwrap_or_else(|| die("usage: fit_bench <cases.jsonl|-> [--repeat N] [--breakdown] [--strict-memory] [-o out.jsonl]"));
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&path).unwrap_or_else(|e| die(&format!("cannot open {path}: {e}"))),
        ))
    };
    let mut out: Box<dyn Write> = match &out_path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).unwrap_or_else(|e| die(&format!("cannot create {p}: {e}"))),
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let (mut n, mut fits, mut nofit, mut errors, mut nonuma, mut total_ns) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u128);
    let (mut total_c_ns, mut total_f_ns, mut n_f, mut total_e_ns) = (0u128, 0u128, 0u128, 0u128);
    for (lineno, line) in reader.lines().enumerate() {
        let line = line.unwrap_or_else(|e| die(&format!("read error: {e}")));
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(&line)
            .unwrap_or_else(|e| die(&format!("line {}: bad case: {e}", lineno + 1)));
        let d = fit::fit_request(&case.host, &case.request, &opts);
        let mut v = decide_json(case.id, &d);
        if repeat > 0 {
            // One decision = what Nova's numa_get_constraints + numa_fit_instance_to_host do:
            // the guest topology, then a placement or None. The refusal's explanation (per-cell
            // reasons, which Nova does not produce) is timed apart as "explained_ns".
            let decide = |h: &HostState, r: &fit::Request| match fit::constraints(r) {
                Ok(Some(topo)) => fit::place(h, &topo, &opts).is_some(),
                _ => false,
            };
            let _ = black_box(decide(black_box(&case.host), black_box(&case.request)));
            let t0 = Instant::now();
            for _ in 0..repeat {
                let _ = black_box(decide(black_box(&case.host), black_box(&case.request)));
            }
            let ns = t0.elapsed().as_nanos() / repeat as u128;
            total_ns += ns;
            v["ns"] = json!(ns as u64);
            let t0 = Instant::now();
            for _ in 0..repeat {
                let _ = black_box(fit::fit_request(
                    black_box(&case.host),
                    black_box(&case.request),
                    &opts,
                ));
            }
            let e_ns = t0.elapsed().as_nanos() / repeat as u128;
            total_e_ns += e_ns;
            v["explained_ns"] = json!(e_ns as u64);
            if breakdown {
                // where the time goes: the request parse (constraints) alone, the fit alone
                let t0 = Instant::now();
                for _ in 0..repeat {
                    let _ = black_box(fit::constraints(black_box(&case.request)));
                }
                let c_ns = t0.elapsed().as_nanos() / repeat as u128;
                v["constraints_ns"] = json!(c_ns as u64);
                total_c_ns += c_ns;
                if let Ok(Some(topo)) = fit::constraints(&case.request) {
                    let t0 = Instant::now();
                    for _ in 0..repeat {
                        let _ = black_box(fit::fit_topology(
                            black_box(&case.host),
                            black_box(&topo),
                            &opts,
                        ));
                    }
                    let f_ns = t0.elapsed().as_nanos() / repeat as u128;
                    v["fit_topology_ns"] = json!(f_ns as u64);
                    total_f_ns += f_ns;
                    n_f += 1;
                }
            }
        }
        match &d {
            Err(_) => errors += 1,
            Ok(Decision::NotNuma) => nonuma += 1,
            Ok(Decision::Fits(_)) => fits += 1,
            Ok(Decision::NoFit(_)) => nofit += 1,
        }
        n += 1;
        writeln!(out, "{v}").unwrap_or_else(|e| die(&format!("write error: {e}")));
    }
    out.flush()
        .unwrap_or_else(|e| die(&format!("write error: {e}")));
    let mut summary = json!({"cases": n, "fit": fits, "no_fit": nofit, "request_error": errors, "no_numa": nonuma});
    if repeat > 0 && n > 0 {
        summary["mean_ns_per_decision"] = json!((total_ns / n as u128) as u64);
        summary["mean_ns_with_explanation"] = json!((total_e_ns / n as u128) as u64);
        if breakdown {
            summary["mean_constraints_ns"] = json!((total_c_ns / n as u128) as u64);
            if let Some(mean) = total_f_ns.checked_div(n_f) {
                summary["mean_fit_topology_ns"] = json!(mean as u64);
                summary["fit_topology_cases"] = json!(n_f as u64);
            }
        }
    }
    eprintln!("fit_bench: {summary}");
}

fn die(msg: &str) -> ! {
    eprintln!("fit_bench: {msg}");
    std::process::exit(2)
}
