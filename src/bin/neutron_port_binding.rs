//! Ansible module `neutron_port_binding`: move a guest's Neutron port bindings through Neutron's
//! API as Nova does around a live migration (prepared, active, rolled_back), or audit ports
//! against where guests run.
numa_repin::module_main!(neutron_port_binding);
