//! Where a guest is, as each host's libvirtd says: defined (running or not), absent, or unknown
//! because the daemon could not be asked. "Could not ask" is never reported as "absent".
//!
//! After a live migration a guest must live on exactly one host. A daemon that dies at the end of
//! the migration can leave the source's persistent definition behind, shut off, with the old pins:
//! `virsh start` would run the guest a second time. [`remove_stale_copy`] undefines such a copy
//! once the guest is confirmed running elsewhere (its disks are kept: undefine never deletes
//! storage), and refuses where that is not safe.

use crate::io::libvirt::{self, consts, Domain, Host};
use serde_json::{json, Value};

/// What one host's libvirtd says about a guest.
pub enum Presence {
    /// libvirtd answered: no such domain.
    Absent,
    /// Defined there; `state` is libvirt's state name. `migrating`: paused (or running post-copy)
    /// inside an unfinished migration, so not yet (or no longer) where the guest runs.
    Defined {
        dom: Domain,
        active: bool,
        migrating: bool,
        state: String,
    },
    /// libvirtd could not be asked (connection lost, daemon down): why.
    Unknown(String),
}

impl Presence {
    /// Ask `h` about `uuid`; when the connection broke, ask once more over a new connection to
    /// `uri` (a restarted daemon answers).
    pub fn of(h: &Host, uri: &str, uuid: &str) -> Presence {
        let ask = |h: &Host| -> libvirt::Result<Presence> {
            let Some(dom) = h.find(uuid)? else {
                return Ok(Presence::Absent);
            };
            let (st, reason) = dom.state()?;
            use libvirt::DomainState as S;
            // virDomainPausedReason MIGRATION (2), STARTING_UP (11: an incoming guest before
            // the migration's Finish), POSTCOPY (12), POSTCOPY_FAILED (13);
            // virDomainRunningReason POSTCOPY (10).
            let migrating = st == S::Paused && matches!(reason, 2 | 11 | 12 | 13)
                || st == S::Running && reason == 10;
            Ok(Presence::Defined {
                active: !matches!(st, S::Shutoff | S::NoState),
                migrating,
                state: if migrating {
                    format!("{} (inside an unfinished migration)", st.name())
                } else {
                    st.name().to_string()
                },
                dom,
            })
        };
        match ask(h) {
            Ok(p) => p,
            Err(first) => match libvirt::connect(uri).and_then(|h2| ask(&h2)) {
                Ok(p) => p,
                Err(_) => Presence::Unknown(first.to_string()),
            },
        }
    }

    /// Like [`Presence::of`], but while the guest is inside an unfinished migration there, ask
    /// again until it settles or `wait` runs out (after a failed migration the destination's
    /// libvirtd removes a half-arrived guest within a second or so).
    pub fn settled(h: &Host, uri: &str, uuid: &str, wait: std::time::Duration) -> Presence {
        let end = std::time::Instant::now() + wait;
        loop {
            let p = Presence::of(h, uri, uuid);
            let migrating = matches!(
                p,
                Presence::Defined {
                    migrating: true,
                    ..
                }
            );
            if !migrating || std::time::Instant::now() >= end {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// Running there: `Some(true/false)` when libvirtd answered, `None` when it could not be asked
    /// or the guest is inside an unfinished migration there.
    pub fn running(&self) -> Option<bool> {
        match self {
            Presence::Absent => Some(false),
            Presence::Defined {
                migrating: true, ..
            } => None,
            Presence::Defined { active, .. } => Some(*active),
            Presence::Unknown(_) => None,
        }
    }

    /// Defined there at all (`None`: could not be asked).
    pub fn defined(&self) -> Option<bool> {
        match self {
            Presence::Absent => Some(false),
            Presence::Defined { .. } => Some(true),
            Presence::Unknown(_) => None,
        }
    }

    /// For results and messages: `absent`, the libvirt state, or `unknown (...)`.
    pub fn label(&self) -> String {
        match self {
            Presence::Absent => "absent".into(),
            Presence::Defined { state, .. } => state.clone(),
            Presence::Unknown(why) => format!("unknown: libvirtd could not be asked ({why})"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"defined": self.defined(), "running": self.running(), "state": self.label()})
    }
}

/// What became of a definition left on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The source has no definition of the guest.
    None,
    /// A shut-off copy was undefined (its disks kept); its state before.
    Removed(String),
    /// Check mode: a shut-off copy would be undefined.
    WouldRemove(String),
    /// The source runs it too: two running copies, left for the operator.
    Running(String),
    /// The source could not be asked.
    Unknown(String),
    /// Undefining failed: why.
    Failed(String),
}

impl Stale {
    /// A line for the result's message, or nothing when there was no copy.
    pub fn note(&self, guest: &str, source: &str) -> Option<String> {
        match self {
            Stale::None => None,
            Stale::Removed(st) => Some(format!("removed the stale {st} definition of {guest} left on {source} (its disks kept)")),
            Stale::WouldRemove(st) => Some(format!("would remove the stale {st} definition of {guest} left on {source} (its disks kept)")),
            Stale::Running(st) => Some(format!("{guest} is also {st} on {source}: two copies run; stop the one Nova does not record (openstack server show) by hand")),
            Stale::Unknown(why) => Some(format!("could not ask {source}'s libvirtd whether a stale definition of {guest} is left there ({why}); rerun when it is back: the rerun removes one")),
            Stale::Failed(why) => Some(format!("the stale definition of {guest} left on {source} could not be removed ({why}); remove it by hand: virsh undefine {guest}")),
        }
    }

    /// Safe to go on: no copy, or one removed (or that would be, in check mode).
    pub fn ok(&self) -> bool {
        matches!(
            self,
            Stale::None | Stale::Removed(_) | Stale::WouldRemove(_)
        )
    }

    pub fn to_json(&self) -> Value {
        let (what, detail) = match self {
            Stale::None => ("none", String::new()),
            Stale::Removed(s) => ("removed", s.clone()),
            Stale::WouldRemove(s) => ("would_remove", s.clone()),
            Stale::Running(s) => ("running", s.clone()),
            Stale::Unknown(s) => ("unknown", s.clone()),
            Stale::Failed(s) => ("failed", s.clone()),
        };
        json!({"status": what, "detail": detail})
    }
}

/// The guest is confirmed running on the destination (settled, not inside a migration there):
/// deal with what the source still has. A shut-off copy is undefined (with its managed-save image
/// and snapshot metadata, keeping NVRAM and disks). A copy still paused inside the migration
/// (the source's libvirtd died before the migration's Confirm step, and came back keeping it
/// paused) is what Confirm would have removed: its QEMU is stopped, then it is undefined. A
/// running one is left alone and reported.
pub fn remove_stale_copy(src: &Host, src_uri: &str, uuid: &str, check_mode: bool) -> Stale {
    match Presence::of(src, src_uri, uuid) {
        Presence::Absent => Stale::None,
        Presence::Unknown(why) => Stale::Unknown(why),
        Presence::Defined {
            active: true,
            migrating: false,
            state,
            ..
        } => Stale::Running(state),
        Presence::Defined { state, .. } if check_mode => Stale::WouldRemove(state),
        Presence::Defined {
            dom, state, active, ..
        } => {
            if active {
                if let Err(e) = dom.destroy(0) {
                    return Stale::Failed(format!("stopping its paused QEMU: {e}"));
                }
            }
            let flags = consts::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | consts::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | consts::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM;
            match dom.undefine(flags) {
                Ok(()) => Stale::Removed(state),
                Err(e) => Stale::Failed(e.to_string()),
            }
        }
    }
}
