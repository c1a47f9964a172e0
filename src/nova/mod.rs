//! Nova: the nova.conf subset that governs pinning, the numa_topology codec, DB access,
//! and the hooks of the in-band patch (what Nova's files get; the rollout is a module).

pub mod conf;
pub mod db;
pub mod hooks;
pub mod numa_json;
pub mod policy;
