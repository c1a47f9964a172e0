//! `cargo bench --bench fit`: the speed goals of the foundation, measured, not asserted.
//! - drain plan: 1,000 hosts x 40 guests, evacuating 50 hosts (2,000 guests) — goal < 1 s, one core;
//! - numa_facts on a host with 100 guests (saved dumps) — goal < 50 ms of process time;
//! - one fit decision on a 2-socket SMT host. The ratio against Nova is bench/fit_vs_nova.sh.
use numa_repin::fit::drain::{self, DrainGuest};
use numa_repin::fit::{
    self, FitOptions, GuestCellReq, GuestTopology, HostCell, HostState, MemPages,
};
use numa_repin::model::cpuset::CpuSet;
use std::time::Instant;

fn cpu_time() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// A 2-socket host, 12 cores x 2 threads per socket, with `used` pCPUs pinned per cell.
fn host(i: usize, used: usize) -> HostState {
    let cells = (0..2u32)
        .map(|s| {
            let ids: Vec<(u32, u32)> = (0..12u32).map(|c| (s * 12 + c, s * 12 + c + 24)).collect();
            let cpuset: CpuSet = ids.iter().flat_map(|(a, b)| [*a, *b]).collect();
            let pinned: CpuSet = cpuset.iter().take(used).collect();
            HostCell {
                id: s,
                siblings: ids
                    .iter()
                    .map(|(a, b)| [*a, *b].into_iter().collect())
                    .collect(),
                cpuset,
                pinned_cpus: pinned,
                memory: 128 * 1024,
                memory_usage: used as u64 * 2048,
                mempages: vec![MemPages {
                    size_kb: 4,
                    total: 32 * 1024 * 1024,
                    used: 0,
                    reserved: 0,
                }],
                cpu_usage: None,
            }
        })
        .collect();
    HostState {
        name: format!("cmp{i:04}"),
        cells,
    }
}

fn guest(name: String, source: String, vcpus: u32) -> DrainGuest {
    DrainGuest {
        name,
        uuid: String::new(),
        source,
        topology: GuestTopology {
            cells: vec![GuestCellReq {
                id: 0,
                vcpus: (0..vcpus).collect(),
                memory_mb: vcpus as u64 * 2048,
                pagesize: None,
            }],
            dedicated: true,
            thread_policy: None,
            emulator_isolate: false,
        },
        policy_source: Default::default(),
    }
}

fn main() {
    // Drain planning.
    let hosts: Vec<HostState> = (0..1000)
        .map(|i| host(i, if i < 50 { 0 } else { (i * 7) % 20 }))
        .collect();
    let mut guests = Vec::new();
    for h in 0..50 {
        for g in 0..40 {
            guests.push(guest(
                format!("g{h}-{g}"),
                format!("cmp{h:04}"),
                1 + (g % 4) as u32,
            ));
        }
    }
    let candidates: Vec<HostState> = hosts[50..].to_vec();
    let (c0, t0) = (cpu_time(), Instant::now());
    let plan = drain::plan_drain(candidates, &guests, &FitOptions::default());
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_time() - c0);
    println!(
        "drain plan 1000 hosts x 40 guests, 50 evacuated: {} moved, {} unplaced, {:.3} s wall, {:.3} s CPU (goal < 1 s: {:.1}x under)",
        plan.moves.len(),
        plan.unplaced.len(),
        wall,
        cpu,
        1.0 / cpu.max(1e-9)
    );

    // One decision, many times.
    let h = host(0, 9);
    let req = fit::Request {
        vcpus: 4,
        memory_mb: 4096,
        extra_specs: [("hw:cpu_policy".to_string(), serde_json::json!("dedicated"))]
            .into_iter()
            .collect(),
        image_properties: Default::default(),
    };
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            fit::fit_request(std::hint::black_box(&h), &req, &FitOptions::default()).ok(),
        );
    }
    println!(
        "fit decision (constraints + fit, 2x12x2 host): {:.2} us per decision",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );

    // numa_facts on 100 guests from saved dumps (libvirt's test driver needed libvirt's C library).
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for i in 0..100 {
        let x = format!("<domain type='kvm'><name>vm{i}</name><uuid>00000000-0000-4000-8000-{i:012}</uuid><memory unit='MiB'>512</memory><vcpu placement='static'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='{}'/><vcpupin vcpu='1' cpuset='{}'/></cputune><numatune><memory mode='strict' nodeset='0'/></numatune><os><type arch='x86_64'>hvm</type></os></domain>", (2 * i) % 48, (2 * i + 1) % 48);
        let p = dir.path().join(format!("vm{i}.xml"));
        std::fs::write(&p, x).expect("write");
        files.push(p);
    }
    let bin = root.join("target/release/numa_facts");
    let args = dir.path().join("args.json");
    let a = serde_json::json!({
        "capabilities_file": root.join("tests/fixtures/saved/caps-2s12c2t.xml"),
        "domain_files": files,
    });
    std::fs::write(&args, a.to_string()).expect("write");
    if bin.exists() {
        let runs = 20;
        let mut best = f64::MAX;
        for _ in 0..runs {
            let mut before: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut before) };
            let out = std::process::Command::new(&bin)
                .arg(&args)
                .output()
                .expect("run numa_facts");
            assert!(
                out.status.success(),
                "numa_facts failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let mut after: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut after) };
            let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            let cpu =
                t(after.ru_utime) - t(before.ru_utime) + t(after.ru_stime) - t(before.ru_stime);
            best = best.min(cpu);
        }
        println!("numa_facts, 100 guests (saved dumps), whole process: {:.1} ms CPU, best of {runs} (goal < 50 ms)", best * 1e3);
    } else {
        println!(
            "numa_facts bench skipped: build target/release/numa_facts first (scripts/build.sh)"
        );
    }
}
