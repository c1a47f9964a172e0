//! The pure model: CPU sets, safe XML, a host's NUMA topology, a guest's domain XML read and
//! rewritten, sizes with units. No I/O: everything here takes text or values and returns values.

pub mod cpuset;
pub mod diff;
pub mod domain;
pub mod placement;
pub mod rewrite;
pub mod topology;
pub mod units;
pub mod xml;
