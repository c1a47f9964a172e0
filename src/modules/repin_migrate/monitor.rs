use super::args::TimeoutAction;
use super::lv;
use crate::io::libvirt::{self, consts};
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
    let t0 = Instant::now();
    let dom = match libvirt::connect(&uri).and_then(|h| h.lookup(&uuid).map(|d| (h, d))) {
        Ok((_h, d)) => d,
        Err(e) => {
            figs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .errors
                .push(format!(
                    "monitor: {e:#}; the job is not watched (no timeouts)"
                ));
            return;
        }
    };
    let mut step = 0usize;
    let mut last_remaining = u64::MAX;
    let mut last_progress = Instant::now();
    let mut acted = false;
    let mut progress = cfg.progress_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| {
                figs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .errors
                    .push(format!("progress_file {}: {e}", p.display()))
            })
            .ok()
    });
    let mut last_line = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        // Woken early when the migration returns (unpark): joining this thread then costs no poll
        // interval and no extra job_stats round trip (measured: ~100 ms of every migration).
        std::thread::park_timeout(Duration::from_millis(100));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let st = match dom.job_stats(0) {
            Ok(s) => s,
            Err(e) => {
                let mut f = figs.lock().unwrap_or_else(|p| p.into_inner());
                f.job_stats_errors += 1;
                f.last_job_stats_error = Some(lv(e));
                continue;
            }
        };
        if st.r#type != consts::VIR_DOMAIN_JOB_BOUNDED
            && st.r#type != consts::VIR_DOMAIN_JOB_UNBOUNDED
        {
            continue;
        }
        let elapsed = t0.elapsed();
        let mut f = figs.lock().unwrap_or_else(|p| p.into_inner());
        f.samples += 1;
        f.elapsed_ms = st.time_elapsed.unwrap_or(elapsed.as_millis() as u64);
        f.data_total_bytes = st.data_total.unwrap_or(f.data_total_bytes);
        f.data_processed_bytes = st.data_processed.unwrap_or(f.data_processed_bytes);
        let remaining = st.data_remaining.unwrap_or(0);
        f.data_remaining_bytes = remaining;
        f.memory_iterations = f.memory_iterations.max(st.mem_iteration.unwrap_or(0));
        // Downtime steps: the next step when its delay has passed.
        while step < cfg.steps.len() && elapsed.as_secs() >= cfg.steps[step].0 {
            let ms = cfg.steps[step].1;
            match dom.migrate_set_max_downtime(ms, 0) {
                Ok(()) => f.downtime_set_ms.push((elapsed.as_millis() as u64, ms)),
                Err(e) => f
                    .errors
                    .push(format!("set max downtime {ms} ms: {}", lv(e))),
            }
            step += 1;
        }
        if remaining < last_remaining {
            last_remaining = remaining;
            last_progress = Instant::now();
        }
        let stalled_s = last_progress.elapsed().as_secs();
        f.longest_stall_s = f.longest_stall_s.max(stalled_s);
        f.dirty_rate_bytes_s = st
            .mem_dirty_rate
            .unwrap_or(0)
            .saturating_mul(st.mem_page_size.unwrap_or(4096));
        if let Some(out) = progress
            .as_mut()
            .filter(|_| last_line.elapsed() >= Duration::from_secs(1))
        {
            last_line = Instant::now();
            // A stall is shown before progress_timeout_s acts on it.
            let stall = (stalled_s >= 2).then(|| {
                if cfg.progress_timeout_s > 0 {
                    format!(
                        "no progress for {stalled_s} s: {} in {} s (progress_timeout_s {})",
                        match cfg.action {
                            TimeoutAction::Abort => "aborts",
                            TimeoutAction::ForceComplete => "forces completion",
                        },
                        cfg.progress_timeout_s.saturating_sub(stalled_s),
                        cfg.progress_timeout_s
                    )
                } else {
                    format!("no progress for {stalled_s} s (progress_timeout_s 0: never acts)")
                }
            });
            let line = ProgressLine {
                elapsed_s: elapsed.as_secs(),
                data_remaining_bytes: remaining,
                data_processed_bytes: f.data_processed_bytes,
                data_total_bytes: f.data_total_bytes,
                dirty_rate_bytes_s: f.dirty_rate_bytes_s,
                memory_iteration: f.memory_iterations,
                downtime_ms: f.downtime_set_ms.last().map(|d| d.1),
                downtime_step: format!("{step}/{}", cfg.steps.len()),
                stalled_s,
                stall,
                phase: if acted {
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
        if acted {
            continue;
        }
        let why = if cfg.completion_timeout_s > 0 && elapsed.as_secs() >= cfg.completion_timeout_s {
            Some(format!(
                "not complete after {} s (completion_timeout_s)",
                cfg.completion_timeout_s
            ))
        } else if cfg.progress_timeout_s > 0
            && last_progress.elapsed().as_secs() >= cfg.progress_timeout_s
        {
            Some(format!(
                "no progress for {} s (progress_timeout_s; {remaining} bytes remaining)",
                cfg.progress_timeout_s
            ))
        } else {
            None
        };
        if let Some(why) = why {
            acted = true;
            f.timeout = Some(why);
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
    }
}
