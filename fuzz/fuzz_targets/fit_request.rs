#![no_main]
use libfuzzer_sys::fuzz_target;
use numa_repin::fit::{self, FitOptions, HostState, Request};
fuzz_target!(|data: &[u8]| {
    // JSON {"host": HostState, "request": Request}: the engine must never panic.
    #[derive(serde::Deserialize)]
    struct Case { host: HostState, request: Request }
    if let Ok(c) = serde_json::from_slice::<Case>(data) {
        if c.request.vcpus <= 256 && c.host.cells.len() <= 8 {
            let _ = fit::fit_request(&c.host, &c.request, &FitOptions::default());
        }
    }
});
