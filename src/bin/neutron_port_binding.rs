//! Ansible module `neutron_port_binding`: move a guest's Neutron port bindings through Neutron's
//! API as Nova does around a live migration (prepared, active, rolled_back), or audit ports
//! against where guests run. All logic lives in `numa_repin::neutron`.
use numa_repin::ansible;
use numa_repin::neutron::{self, Args};

fn main() {
    ansible::run::<Args, _>("neutron_port_binding", neutron::run)
}
