//! numa-repin: Ansible modules that live-migrate CPU-pinned OpenStack guests with their pinning
//! recomputed for the destination, and keep Nova's database in line. See ARCHITECTURE.md.

pub mod ansible;
pub mod claim;
pub mod container;
pub mod cpuset;
pub mod domain;
pub mod drain;
pub mod facts;
pub mod fit;
pub mod fixup;
pub mod libvirt;
pub mod limits;
pub mod lock;
pub mod migrate;
pub mod neutron;
pub mod nova;
pub mod presence;
pub mod repin;
pub mod ssh;
pub mod topology;
pub mod xml;
