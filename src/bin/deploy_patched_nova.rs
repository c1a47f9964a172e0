//! Ansible module `deploy_patched_nova`: roll the in-band Nova patch into Kolla's Nova
//! containers, verified, health-gated, rolled back on failure; or restore pristine Nova.
numa_repin::module_main!(deploy_patched_nova);
