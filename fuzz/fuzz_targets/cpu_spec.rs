#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(set) = numa_repin::model::cpuset::parse_spec(s) {
            // formatting then parsing gives the same set back
            let again = numa_repin::model::cpuset::parse_spec(&numa_repin::model::cpuset::format_spec(&set)).unwrap();
            assert_eq!(set, again);
        }
    }
});
