//! Ansible module `pin_fit_check`: does a guest fit on a host, per NUMA cell, with which pCPUs;
//! or plan a whole drain. Never changes anything.
numa_repin::module_main!(pin_fit_check);
