//! Nova: the nova.conf subset that governs pinning (and later the numa_topology codec and DB).

pub mod conf;
pub mod db;
pub mod numa_json;
