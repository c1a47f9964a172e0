//! Nova: nova.conf subset, numa_topology codec, DB access.
