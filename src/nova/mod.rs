//! Nova: the nova.conf subset that governs pinning, the numa_topology codec, DB access, and the
//! rollout of the in-band Nova patch into its containers or a Nova directory.

pub mod conf;
pub mod db;
pub mod hooks;
pub mod numa_json;
pub mod patch;
pub mod tree;
pub mod units;
