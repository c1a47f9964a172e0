//! Ansible module `repin_migrate`: live-migrate a CPU-pinned guest with its pinning recomputed
//! for the destination (pre-Train Nova copies the source pins verbatim), or repin a running
//! guest on its own host (`mode: repin`). All logic lives in `numa_repin::migrate`.
use numa_repin::ansible;
use numa_repin::migrate::{self, Args};

fn main() {
    ansible::run::<Args, _>("repin_migrate", migrate::run)
}
