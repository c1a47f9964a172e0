//! Exclusive file locks (`flock`) with a bounded wait: they serialise work that must not
//! interleave across processes of one machine (Nova patch rollouts on one host). Migrations to one
//! destination are serialised by `crate::io::claim` instead, which holds across machines.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock: released when dropped (or when the process dies).
pub struct Held {
    _file: File,
    pub waited: Duration,
}

/// Take the exclusive lock on `path` (created if missing), waiting up to `timeout`.
/// `Ok(None)`: another holder kept it for the whole wait. The holder's pid is written into
/// the file, for an operator who wants to know who holds it.
pub fn acquire(path: &Path, timeout: Duration) -> std::io::Result<Option<Held>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let t0 = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if t0.elapsed() <= timeout => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
    let mut f = &file;
    let _ = f.set_len(0);
    let _ = writeln!(f, "pid {}", std::process::id());
    Ok(Some(Held {
        _file: file,
        waited: t0.elapsed(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = acquire(&p, Duration::from_secs(1)).unwrap().unwrap();
        assert!(acquire(&p, Duration::from_millis(100)).unwrap().is_none());
        drop(held);
        assert!(acquire(&p, Duration::from_millis(100)).unwrap().is_some());
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("pid "));
    }
}
