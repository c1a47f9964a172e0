//! Ansible module `numa_facts`: a host's NUMA topology, nova.conf CPU sets and every guest's
//! pinning with overlaps and pins on missing pCPUs, as `ansible_facts.numa`. Never changes anything.
numa_repin::module_main!(numa_facts);
