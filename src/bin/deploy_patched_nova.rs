//! Ansible module `deploy_patched_nova`: roll the in-band Nova patch into Kolla's Nova
//! containers, verified, health-gated, rolled back on failure; or restore pristine Nova.
//! All logic lives in `numa_repin::nova::patch`.
use numa_repin::ansible;
use numa_repin::nova::patch::{self, Args};

fn main() {
    ansible::run::<Args, _>("deploy_patched_nova", patch::run)
}
