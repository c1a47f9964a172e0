//! `repin_migrate`: live-migrate a pinned guest with its pinning recomputed for the destination
//! (mode `migrate`), or move a running guest's pins to free pCPUs on its own host (mode `repin`).
//!
//! Migration flow:
//! 1. read the guest on the source (live migratable XML, inactive XML, pins);
//! 2. claim the destination *in its libvirtd* (`crate::io::claim`): define the never-started domain
//!    `numa-repin-claim` with a fresh random uuid on the destination; libvirtd refuses a second
//!    definition of that name, so every runner that targets the host sees the claim, whatever
//!    machine it runs on (two controllers, runs on different source hosts). A held claim is
//!    waited for (polling, up to `lock_timeout_s`). The claim is a lease the holder renews every
//!    10 s from a thread of its own; a claim whose renewal counter stays unchanged for
//!    `claim_lease_s` of the waiter's own clock is stale (holder dead, or cut off from the host as
//!    long, e.g. its release could not reach a restarting libvirtd) and is taken over, and so is
//!    a claim of this machine whose process is gone; the result says so. A claim that is never
//!    renewed (defined by hand) is never broken: the timeout message names its holder and the
//!    command that removes it. The claim is held across fit + disk preparation + migration + verification and
//!    undefined (only if it still carries our uuid) on every exit path; the destination's live
//!    pinning is read *after* it is taken, i.e. just before migrating, and checked again after.
//!    Check mode takes no claim. Mode repin takes the same claim on its host. `lock_dir` is still
//!    accepted but no longer used: the flock it named protected only runs on one machine;
//!    no local flock is kept in front of the claim either: waiters of one machine poll libvirt
//!    like the others (a few cheap calls a second), and a second lock with its own wait and
//!    failure modes would add nothing to the exclusion;
//! 3. fit the guest's topology on the live destination state (`vcpu_pin_set` from the
//!    destination's nova.conf), or refuse before anything moves (`No numa available ...`);
//! 4. check the guest CPU model against the destination (skipped, and said, for TCG guests);
//! 5. block migration: prepare the destination over SSH like Nova's `pre_live_migration`;
//! 6. `virDomainMigrateToURI3` peer-to-peer (one perform call on the source, `libvirt::Domain::migrate_to_uri3`) with DEST_XML and PERSIST_XML = the rewritten XML
//!    (`rewrite::rewrite`), a monitor thread applying Nova's downtime steps, stall and completion
//!    timeouts (abort or force complete);
//! 7. verify: running only on the destination, live + persistent pins equal the plan, the live
//!    pins read through libvirt (vCPU pin info, emulator pin info, the vCPU threads' affinity from
//!    vCPU info) too, and /proc's affinity as an extra check when the QEMU process is visible
//!    here; no overlap with other guests.
//!
//! A failed migration is checked to have left the guest running on the source with its old
//! pins, and the failure says so.

mod affinity;
pub mod args;
mod claim;
mod migrate;
mod monitor;
mod plan;
mod prepare;
mod repin;
mod report;
mod source;
#[cfg(test)]
mod tests;
mod verify;

use crate::ansible::{Context, Failure, Outcome};
use crate::io::libvirt;
use anyhow::Result;
pub use args::Args;
use args::Mode;

// ---------------------------------------------------------------------------------------------
// Small helpers.

pub(super) fn lv(e: libvirt::Error) -> String {
    e.message()
}

pub fn run(a: Args, ctx: &Context) -> Result<Outcome> {
    let same = a.dest_uri.as_deref().is_none_or(|d| d == a.source_uri);
    match a.mode {
        Mode::Repin => {
            if !same {
                return Err(Failure::new(
                    "mode repin works on one host: give source_uri only (or dest_uri equal to it)"
                        .to_string(),
                )
                .into());
            }
            repin::repin_in_place(&a, ctx)
        }
        Mode::Migrate => {
            if same {
                return Err(Failure::new("dest_uri is missing or equals source_uri; to move pins on the same host use mode: repin".to_string()).into());
            }
            migrate::migrate(&a, ctx)
        }
    }
}
