//! I/O adapters: libvirtd's remote protocol, the destination claim and a guest's presence built
//! on it, OpenSSH, the container engine, file locks.

pub mod claim;
pub mod container;
pub mod libvirt;
pub mod lock;
pub mod presence;
pub mod ssh;
