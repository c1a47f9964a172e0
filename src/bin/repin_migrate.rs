//! Ansible module `repin_migrate`: live-migrate a CPU-pinned guest with its pinning recomputed
//! for the destination (pre-Train Nova copies the source pins verbatim), or repin a running
//! guest on its own host (`mode: repin`).
numa_repin::module_main!(repin_migrate);
