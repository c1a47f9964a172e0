//! numa-repin: Ansible modules that live-migrate CPU-pinned OpenStack guests with their pinning
//! recomputed for the destination, and keep Nova's database in line. See ARCHITECTURE.md.

pub mod ansible;
pub mod facts;
pub mod fit;
pub mod io;
pub mod limits;
pub mod model;
pub mod modules;
pub mod nova;
