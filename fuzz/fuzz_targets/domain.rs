#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(g) = numa_repin::model::domain::parse_guest(s) {
            let _ = numa_repin::fit::GuestTopology::from_guest(&g, None);
        }
    }
});
