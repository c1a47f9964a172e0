//! Ansible module `nova_instance_fixup`: bring Nova's database in line with where and how a
//! guest runs now (after a repinned migration), in one transaction; or audit the drift.
numa_repin::module_main!(nova_instance_fixup);
