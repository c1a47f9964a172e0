use super::args::Args;
use crate::ansible::{Failure, Outcome};
use crate::io::libvirt::{self, Host};
use anyhow::{anyhow, Result};
use serde_json::json;
use std::time::Duration;

/// Take the claim on `h` for this run (see module docs), or fail with the holder named.
pub(super) fn take_claim(
    h: &Host,
    a: &Args,
    guest: &str,
    mode: &str,
) -> Result<crate::io::claim::Claim> {
    let me = crate::io::claim::Owner::me(guest, &a.source_uri, &h.uri, mode);
    crate::io::claim::acquire(
        h,
        &me,
        Duration::from_secs(a.lock_timeout_s),
        crate::io::claim::POLL,
        Duration::from_secs(a.claim_lease_s.max(1)),
    )
    .map_err(|r| match r {
        crate::io::claim::Refused::Timeout {
            uuid,
            holder,
            waited,
        } => {
            let now = crate::io::claim::now_unix();
            let mut f = Failure::new(crate::io::claim::timeout_msg(&h.uri, &uuid, &holder, waited, now,
            ))
            .with("guest_on_source", mode == "migrate")
            .with("claim_uuid", &uuid);
            if let Ok(o) = &*holder {
                f = f.with(
                    "claim_holder",
                    json!({"host": o.host, "pid": o.pid, "guest": o.guest, "source": o.source, "age_s": o.age_s(now)}),
                );
            }
            anyhow::Error::new(f)
        }
        crate::io::claim::Refused::Error(e) => anyhow!("cannot claim {}: {e:#}", h.uri),
    })
}

/// Release the claim now and put it (and any trouble releasing it) in the result.
pub(super) fn release_claim(o: &mut Outcome, c: Option<crate::io::claim::Claim>) {
    let Some(mut c) = c else { return };
    let mut rep = c.report();
    match c.release() {
        Ok(true) => rep["released"] = json!(true),
        Ok(false) => {
            rep["released"] = json!(false);
            o.warnings.push(format!("the claim {} on {} was gone or no longer ours when releasing it (removed by hand?)", c.uuid, c.destination));
        }
        Err(e) => {
            rep["released"] = json!(false);
            o.warnings.push(format!(
                "could not release the claim on {}: {e:#}; remove it: virsh -c {} undefine {}",
                c.destination,
                c.destination,
                libvirt::CLAIM_NAME
            ));
        }
    }
    if let Some((u, h, why)) = &c.took_over {
        o.warnings.push(format!(
            "took over a stale claim ({u}) left on {} by host {} pid {} (guest {}): {why}",
            c.destination, h.host, h.pid, h.guest
        ));
    }
    o.set("claim", rep);
}
