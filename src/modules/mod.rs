//! One folder per Ansible module: its arguments and its flow. `src/bin/<module>.rs` only calls in.

pub mod deploy_patched_nova;
pub mod neutron_port_binding;
pub mod nova_instance_fixup;
pub mod numa_facts;
pub mod pin_fit_check;
pub mod repin_migrate;
