//! The migration job's monitor: a thread with its own libvirt connection that samples the job,
//! applies Nova's downtime steps, writes the progress file and acts on the stall and completion
//! timeouts.

use super::args::TimeoutAction;
use super::lv;
use crate::io::libvirt::{self, consts, Domain, JobStats};
use crate::limits;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Job monitor.

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobFigures {
    pub samples: u64,
    pub elapsed_ms: u64,
    pub data_total_bytes: u64,
    pub data_processed_bytes: u64,
    pub data_remaining_bytes: u64,
    pub memory_iterations: u64,
    pub downtime_set_ms: Vec<(u64, u64)>,
    pub timeout: Option<String>,
    pub action_taken: Option<String>,
    pub paused_source: bool,
    pub errors: Vec<String>,
    pub job_stats_errors: u64,
    pub last_job_stats_error: Option<String>,
    /// Bytes dirtied per second at the last sample.
    pub dirty_rate_bytes_s: u64,
    /// The longest time the remaining data did not shrink, in seconds.
    pub longest_stall_s: u64,
}

/// One line of the progress file.
#[derive(Debug, Serialize)]
pub(super) struct ProgressLine<'a> {
    elapsed_s: u64,
    data_remaining_bytes: u64,
    data_processed_bytes: u64,
    data_total_bytes: u64,
    dirty_rate_bytes_s: u64,
    memory_iteration: u64,
    downtime_ms: Option<u64>,
    downtime_step: String,
    stalled_s: u64,
    /// Set while stalled: how long until progress_timeout_s acts, and what it will do.
    stall: Option<String>,
    phase: &'a str,
}

pub(super) struct MonitorCfg {
    pub(super) progress_file: Option<PathBuf>,
    pub(super) steps: Vec<(u64, u64)>, // (delay s, downtime ms)
    pub(super) completion_timeout_s: u64,
    pub(super) progress_timeout_s: u64,
    pub(super) action: TimeoutAction,
    pub(super) post_copy: bool,
}

/// Nova's downtime steps (`nova.virt.libvirt.migration.downtime_steps`).
pub fn downtime_steps(
    max_ms: u64,
    steps: u64,
    delay_per_gib: u64,
    data_gib: f64,
) -> Vec<(u64, u64)> {
    // Bounded where it comes in (Args::validate); clamped here too, as the list is allocated.
    let steps = steps.clamp(1, limits::MAX_DOWNTIME_STEPS);
    let delay = (delay_per_gib as f64 * data_gib) as u64;
    let base = max_ms / steps;
    let offset = (max_ms - base) / steps;
    (0..=steps)
        .map(|i| {
            (
                delay.saturating_mul(i),
                base.saturating_add(offset.saturating_mul(i)),
            )
        })
        .collect()
}

/// Watch the migration job from a connection of its own (the migration call occupies the other).
pub(super) fn monitor(
    uri: String,
    uuid: String,
    cfg: MonitorCfg,
    stop: Arc<AtomicBool>,
    figs: Arc<Mutex<JobFigures>>,
) {
    let lock = || figs.lock().unwrap_or_else(|p| p.into_inner());
    let dom = match libvirt::connect(&uri).and_then(|h| h.lookup(&uuid).map(|d| (h, d))) {
        Ok((_h, d)) => d,
        Err(e) => {
            lock().errors.push(format!(
                "monitor: {e:#}; the job is not watched (no timeouts)"
            ));
            return;
        }
    };
    let progress = cfg.progress_file.as_ref().and_then(|p| {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p);
        opened
            .map_err(|e| {
                lock()
                    .errors
                    .push(format!("progress_file {}: {e}", p.display()))
            })
            .ok()
    });
    let mut w = Watch {
        cfg,
        t0: Instant::now(),
        step: 0,
        last_remaining: u64::MAX,
        last_progress: Instant::now(),
        acted: false,
        progress,
        last_line: Instant::now() - Duration::from_secs(1),
    };
    while !stop.load(Ordering::SeqCst) {
        // Woken early when the migration returns (unpark): joining this thread then costs no poll
        // interval and no extra job_stats round trip (measured: ~100 ms of every migration).
        std::thread::park_timeout(Duration::from_millis(100));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match dom.job_stats(0) {
            Ok(st)
                if st.r#type == consts::VIR_DOMAIN_JOB_BOUNDED
                    || st.r#type == consts::VIR_DOMAIN_JOB_UNBOUNDED =>
            {
                w.sample(&dom, &st, &mut lock())
            }
            Ok(_) => {}
            Err(e) => {
                let mut f = lock();
                f.job_stats_errors += 1;
                f.last_job_stats_error = Some(lv(e));
            }
        }
    }
}

/// The monitor's state between samples.
struct Watch {
    cfg: MonitorCfg,
    t0: Instant,
    /// The next downtime step to apply.
    step: usize,
    last_remaining: u64,
    last_progress: Instant,
    /// A timeout was acted on (once).
    acted: bool,
    progress: Option<std::fs::File>,
    last_line: Instant,
}

impl Watch {
    /// One sample of the job: figures, downtime steps, the progress line, the timeouts.
    fn sample(&mut self, dom: &Domain, st: &JobStats, f: &mut JobFigures) {
        let elapsed = self.t0.elapsed();
        f.samples += 1;
        f.elapsed_ms = st.time_elapsed.unwrap_or(elapsed.as_millis() as u64);
        f.data_total_bytes = st.data_total.unwrap_or(f.data_total_bytes);
        f.data_processed_bytes = st.data_processed.unwrap_or(f.data_processed_bytes);
        let remaining = st.data_remaining.unwrap_or(0);
        f.data_remaining_bytes = remaining;
        f.memory_iterations = f.memory_iterations.max(st.mem_iteration.unwrap_or(0));
        self.downtime_steps(dom, elapsed, f);
        if remaining < self.last_remaining {
            self.last_remaining = remaining;
            self.last_progress = Instant::now();
        }
        let stalled_s = self.last_progress.elapsed().as_secs();
        f.longest_stall_s = f.longest_stall_s.max(stalled_s);
        f.dirty_rate_bytes_s = st
            .mem_dirty_rate
            .unwrap_or(0)
            .saturating_mul(st.mem_page_size.unwrap_or(4096));
        self.progress_line(elapsed, remaining, stalled_s, f);
        if !self.acted {
            if let Some(why) = self.timeout(elapsed, remaining) {
                self.acted = true;
                f.timeout = Some(why);
                act(dom, &self.cfg, f);
            }
        }
    }

    /// Nova's downtime steps: the next step when its delay has passed.
    fn downtime_steps(&mut self, dom: &Domain, elapsed: Duration, f: &mut JobFigures) {
        while self.step < self.cfg.steps.len() && elapsed.as_secs() >= self.cfg.steps[self.step].0 {
            let ms = self.cfg.steps[self.step].1;
            match dom.migrate_set_max_downtime(ms, 0) {
                Ok(()) => f.downtime_set_ms.push((elapsed.as_millis() as u64, ms)),
                Err(e) => f
                    .errors
                    .push(format!("set max downtime {ms} ms: {}", lv(e))),
            }
            self.step += 1;
        }
    }

    /// A line of the progress file, at most one a second.
    fn progress_line(&mut self, elapsed: Duration, remaining: u64, stalled_s: u64, f: &JobFigures) {
        let Some(out) = self
            .progress
            .as_mut()
            .filter(|_| self.last_line.elapsed() >= Duration::from_secs(1))
        else {
            return;
        };
        self.last_line = Instant::now();
        let cfg = &self.cfg;
        // A stall is shown before progress_timeout_s acts on it.
        let stall = (stalled_s >= 2).then(|| match cfg.progress_timeout_s {
            0 => format!("no progress for {stalled_s} s (progress_timeout_s 0: never acts)"),
            t => format!(
                "no progress for {stalled_s} s: {} in {} s (progress_timeout_s {t})",
                match cfg.action {
                    TimeoutAction::Abort => "aborts",
                    TimeoutAction::ForceComplete => "forces completion",
                },
                t.saturating_sub(stalled_s),
            ),
        });
        let line = ProgressLine {
            elapsed_s: elapsed.as_secs(),
            data_remaining_bytes: remaining,
            data_processed_bytes: f.data_processed_bytes,
            data_total_bytes: f.data_total_bytes,
            dirty_rate_bytes_s: f.dirty_rate_bytes_s,
            memory_iteration: f.memory_iterations,
            downtime_ms: f.downtime_set_ms.last().map(|d| d.1),
            downtime_step: format!("{}/{}", self.step, cfg.steps.len()),
            stalled_s,
            stall,
            phase: if self.acted {
                "acting on a timeout"
            } else {
                "copying"
            },
        };
        if let Ok(text) = serde_json::to_string(&line) {
            use std::io::Write;
            let _ = writeln!(out, "{text}");
        }
    }

    /// Why the job must be acted on now, if it must.
    fn timeout(&self, elapsed: Duration, remaining: u64) -> Option<String> {
        let cfg = &self.cfg;
        if cfg.completion_timeout_s > 0 && elapsed.as_secs() >= cfg.completion_timeout_s {
            Some(format!(
                "not complete after {} s (completion_timeout_s)",
                cfg.completion_timeout_s
            ))
        } else if cfg.progress_timeout_s > 0
            && self.last_progress.elapsed().as_secs() >= cfg.progress_timeout_s
        {
            Some(format!(
                "no progress for {} s (progress_timeout_s; {remaining} bytes remaining)",
                cfg.progress_timeout_s
            ))
        } else {
            None
        }
    }
}

/// The timeout action: abort, switch to post-copy, or pause the guest so the copy completes.
fn act(dom: &Domain, cfg: &MonitorCfg, f: &mut JobFigures) {
    let res = match cfg.action {
        TimeoutAction::Abort => {
            f.action_taken = Some("abort".into());
            dom.abort_job()
        }
        TimeoutAction::ForceComplete if cfg.post_copy => {
            f.action_taken = Some("force_complete: switch to post-copy".into());
            dom.migrate_start_post_copy(0)
        }
        TimeoutAction::ForceComplete => {
            f.action_taken =
                Some("force_complete: pause the guest so the migration completes".into());
            let r = dom.suspend();
            if r.is_ok() {
                f.paused_source = true;
            }
            r
        }
    };
    if let Err(e) = res {
        let what = f.action_taken.clone().unwrap_or_default();
        f.errors.push(format!("{what}: {}", lv(e)));
    }
}
