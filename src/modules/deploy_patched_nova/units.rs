//! The systemd units that run a host-installed Nova (`openstack-nova-compute`, `nova-compute`):
//! whether they run, their restart, and the health gate's wait. Through `systemctl`, as an
//! operator would; the rollout patches the files, these load them.

use std::process::Command;
use std::time::{Duration, Instant};

/// How long a restarted unit must stay active, with no restart of its own, to count as up: a
/// service that dies on the new files is restarted by systemd (`Restart=`) and looks active
/// between two deaths.
const SETTLE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(500);

/// Why a unit could not be asked, was not in the state the rollout needs, or did not restart.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    #[error("`services` entry {0:?} is not a systemd unit name")]
    BadName(String),
    /// systemctl itself could not be run (`args` as given to it).
    #[error("cannot run `systemctl {args}`: {why}")]
    Spawn { args: String, why: String },
    /// systemctl ran and failed (`args` as given to it, its standard error).
    #[error("`systemctl {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("systemd unit {unit} is {state} (not loaded): name the unit that runs this Nova; nothing was changed")]
    NotLoaded { unit: String, state: String },
    #[error("systemd unit {unit} is {state}, not active: start it first (the health gate needs it running), or leave `services` out; nothing was changed")]
    NotActive { unit: String, state: String },
    /// `systemctl restart` returned 0 and left the same process in the same activation.
    #[error("`systemctl restart {unit}` returned, but {unit} did not restart (same main PID {pid}): {stderr}")]
    NoRestart {
        unit: String,
        pid: String,
        stderr: String,
    },
    #[error("systemd unit {unit} did not stay active for {settle_s}s within {timeout_s}s (now {state}, result {result}); see `journalctl -u {unit}`")]
    NotSettled {
        unit: String,
        settle_s: u64,
        timeout_s: u64,
        state: String,
        result: String,
    },
}

type Result<T> = std::result::Result<T, UnitError>;

/// A unit name as systemctl takes it: no option, no path, no glob.
pub fn check_name(unit: &str) -> Result<()> {
    let ok = !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-:\\".contains(c));
    if !ok {
        return Err(UnitError::BadName(unit.to_string()));
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<std::process::Output> {
    Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| UnitError::Spawn {
            args: args.join(" "),
            why: e.to_string(),
        })
}

/// `systemctl <verb> -- <units>`, which must succeed.
fn on_units(verb: &str, units: &[String]) -> Result<std::process::Output> {
    let mut args = vec![verb, "--"];
    args.extend(units.iter().map(String::as_str));
    let out = systemctl(&args)?;
    if !out.status.success() {
        return Err(UnitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// `systemctl show` properties of one unit.
fn show(unit: &str, props: &[&str]) -> Result<Vec<String>> {
    let p = props.join(",");
    let out = systemctl(&["show", "-p", &p, "--", unit])?;
    if !out.status.success() {
        return Err(UnitError::Failed {
            args: format!("show {unit}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(props
        .iter()
        .map(|k| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        })
        .collect())
}

/// Every unit is loaded and active: the state before the run, which a rollback restores.
/// A unit that is missing or not running is refused: the gate could prove nothing.
pub fn precheck(units: &[String]) -> Result<()> {
    for u in units {
        let v = show(u, &["LoadState", "ActiveState"])?;
        if v[0] != "loaded" {
            return Err(UnitError::NotLoaded {
                unit: u.clone(),
                state: if v[0].is_empty() { "unknown" } else { &v[0] }.to_string(),
            });
        }
        if v[1] != "active" {
            return Err(UnitError::NotActive {
                unit: u.clone(),
                state: v[1].clone(),
            });
        }
    }
    Ok(())
}

pub fn all_active(units: &[String]) -> Result<bool> {
    for u in units {
        if show(u, &["ActiveState"])?[0] != "active" {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn run(verb: &str, units: &[String]) -> Result<()> {
    let props = ["ActiveEnterTimestampMonotonic", "MainPID"];
    let before: Vec<Vec<String>> = units
        .iter()
        .map(|u| show(u, &props))
        .collect::<Result<_>>()?;
    if verb == "start" || verb == "restart" {
        // A unit that crash-looped on the new files has usually hit its start limit (Ubuntu's
        // nova-compute restarts every 100 ms), and systemd refuses any start until it is reset.
        on_units("reset-failed", units)?;
    }
    let out = on_units(verb, units)?;
    if verb == "restart" {
        // systemctl exits 0 without doing anything where it thinks it runs in a chroot; a
        // restart that left the same process in the same activation did not happen.
        for (u, b) in units.iter().zip(&before) {
            let a = show(u, &props)?;
            if a == *b && b[1] != "0" {
                return Err(UnitError::NoRestart {
                    unit: u.clone(),
                    pid: b[1].clone(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Wait until every unit is active and has stayed so for SETTLE (the same activation: its
/// ActiveEnterTimestampMonotonic does not move), within `timeout`.
pub fn wait_up(units: &[String], timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    for u in units {
        let mut since: Option<(String, Instant)> = None;
        loop {
            let v = show(
                u,
                &["ActiveState", "ActiveEnterTimestampMonotonic", "Result"],
            )?;
            let (state, entered, result) = (&v[0], &v[1], &v[2]);
            match &since {
                Some((e, t)) if state == "active" && e == entered => {
                    if t.elapsed() >= SETTLE {
                        break;
                    }
                }
                _ if state == "active" => since = Some((entered.clone(), Instant::now())),
                _ => since = None,
            }
            if Instant::now() >= end {
                return Err(UnitError::NotSettled {
                    unit: u.clone(),
                    settle_s: SETTLE.as_secs(),
                    timeout_s: timeout.as_secs(),
                    state: state.clone(),
                    result: result.clone(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        for ok in [
            "openstack-nova-compute",
            "nova-compute.service",
            "getty@tty1.service",
        ] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-H host", "a b", "../x", "x;reboot", "*"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_name("a b").unwrap_err().to_string(),
            "`services` entry \"a b\" is not a systemd unit name"
        );
    }
}
