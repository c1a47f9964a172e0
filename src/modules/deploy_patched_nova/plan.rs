//! The plan: what each file of each tree holds now and must hold (hooks applied in place to what
//! the tree holds; our own output recognised from the kept original), and the tree's status.

use super::args::{matches, Args, PatchState};
use super::fail;
use super::record::{backup_path, load_written, orig_path, Written};
use super::tree::{NovaInfo, NovaTree};
use crate::io::container::sha256_hex;
use crate::limits;
use crate::nova::hooks::{HookedFile, PatchSet, CORE, MARKER};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;
/// One file of one tree: where it is, what it holds now, what it must hold.
#[derive(Debug, Clone)]
pub(super) struct FilePlan {
    pub(super) rel: String,
    pub(super) path: String,
    pub(super) current: Option<Vec<u8>>,
    pub(super) target: Option<Vec<u8>>,
    pub(super) status: FileStatus,
    /// The current file is Nova's own, unpatched (the only content ever backed up as the
    /// original).
    pub(super) pristine: bool,
    /// The hooks (and variants) that make the target from the original.
    pub(super) hooks: Vec<String>,
}

/// What one tree (a container, or the directory of `path`) holds and must hold.
pub(super) struct TreePlan<'t> {
    pub(super) tree: &'t dyn NovaTree,
    pub(super) info: NovaInfo,
    pub(super) release: String,
    pub(super) files: Vec<FilePlan>,
    /// Why files of this tree cannot be planned; `unmatched` names the hooks that did not match.
    pub(super) refused: Vec<String>,
    pub(super) unmatched: Vec<String>,
    /// The container's healthcheck status before this run (None: it has no healthcheck). A
    /// rollback restores this, not more: it waits for `healthy` only if it was healthy.
    pub(super) health_before: Option<String>,
}

impl TreePlan<'_> {
    pub(super) fn name(&self) -> &str {
        self.tree.name()
    }
    pub(super) fn changes(&self) -> impl Iterator<Item = &FilePlan> {
        self.files.iter().filter(|f| f.current != f.target)
    }
    /// One word for the audit, whatever this run is about to do with the files.
    pub(super) fn status(&self) -> TreeStatus {
        if !self.unmatched.is_empty() {
            return TreeStatus::Unsupported(self.unmatched.clone());
        }
        if !self.refused.is_empty() {
            return TreeStatus::Refused(self.refused.clone());
        }
        let holds: Vec<Holds> = self.files.iter().map(|f| f.status.holds()).collect();
        if holds.contains(&Holds::Older) {
            TreeStatus::OlderBuild
        } else if holds.iter().all(|h| *h == Holds::Patched) {
            TreeStatus::Patched
        } else if holds.iter().all(|h| *h == Holds::Unpatched) {
            TreeStatus::Unpatched
        } else {
            TreeStatus::PartlyPatched
        }
    }
}

/// A file's status in the result: what it holds, or what this run does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileStatus {
    Patched,
    Unpatched,
    WouldPatch,
    /// Our output of an earlier build, rebuilt from the original.
    WouldUpdate,
    WouldRestore,
    /// The core, which Nova lacks.
    WouldRemove,
}

/// What a file holds now (before this run changes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    Patched,
    /// Patched by an earlier build of the patch.
    Older,
    Unpatched,
}

impl FileStatus {
    fn holds(self) -> Holds {
        match self {
            FileStatus::Patched | FileStatus::WouldRestore | FileStatus::WouldRemove => {
                Holds::Patched
            }
            FileStatus::WouldUpdate => Holds::Older,
            FileStatus::Unpatched | FileStatus::WouldPatch => Holds::Unpatched,
        }
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileStatus::Patched => "patched",
            FileStatus::Unpatched => "unpatched",
            FileStatus::WouldPatch => "would patch",
            FileStatus::WouldUpdate => "would update",
            FileStatus::WouldRestore => "would restore",
            FileStatus::WouldRemove => "would remove",
        })
    }
}

/// A tree's status for the audit: `patched`, `unpatched`, `partly patched`, `patched by an
/// older build`, `unsupported (<the hooks that did not match>)` or `refused (<why>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TreeStatus {
    Patched,
    Unpatched,
    PartlyPatched,
    OlderBuild,
    Unsupported(Vec<String>),
    Refused(Vec<String>),
}

impl std::fmt::Display for TreeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeStatus::Patched => f.write_str("patched"),
            TreeStatus::Unpatched => f.write_str("unpatched"),
            TreeStatus::PartlyPatched => f.write_str("partly patched"),
            TreeStatus::OlderBuild => f.write_str("patched by an older build"),
            TreeStatus::Unsupported(hooks) => write!(f, "unsupported ({})", hooks.join("; ")),
            TreeStatus::Refused(why) => write!(f, "refused ({})", why.join("; ")),
        }
    }
}

/// What one tree holds now and must hold, file by file: each hooked file as the hooks make it
/// from what the tree holds (or from the kept original, when the tree holds our output), the
/// core as built. Files that cannot be told apart or hooked go to the plan's `refused`; the
/// caller changes nothing if any tree has some. `parts: None`: every file of the patch.
pub(super) fn plan_tree<'t>(
    tree: &'t dyn NovaTree,
    a: &Args,
    parts: Option<&[String]>,
    set: &PatchSet,
) -> Result<TreePlan<'t>> {
    let name = tree.name();
    let health_before = tree.precheck().map_err(|e| fail(format!("{e:#}")))?;
    let info = tree
        .discover(a.python.as_deref())
        .map_err(|e| fail(format!("{e:#}")))?;
    let release = match (a.release.as_str(), info.version.is_empty()) {
        ("auto", false) => info.version.clone(),
        ("auto", true) => UNKNOWN_RELEASE.to_string(),
        (r, _) => r.to_string(),
    };
    let written = load_written(&a.backup_dir, &tree.backup_key(), &release);
    let ctx = PlanCtx {
        tree,
        backup_dir: &a.backup_dir,
        release: &release,
        written: &written,
    };
    let base = info.path.trim_end_matches('/').to_string();
    let wanted = |p: &str| parts.is_none_or(|ps| matches(p, ps));
    let mut files = Vec::new();
    let mut refused = Vec::new();
    let mut unmatched = Vec::new();
    for hf in set.files.iter().filter(|f| wanted(&f.path)) {
        let path = format!("{base}/{}", hf.path);
        match ctx.plan_hooked(hf, &path, a.state)? {
            Ok(f) => files.push(f),
            Err((r, u)) => {
                refused.push(r);
                unmatched.extend(u);
            }
        }
    }
    if wanted(CORE) {
        let path = format!("{base}/{CORE}");
        match ctx.plan_core(&set.core, &path, a.state)? {
            Ok(f) => files.push(f),
            Err(r) => refused.push(r),
        }
    }
    if files.is_empty() && refused.is_empty() {
        return Err(fail(format!(
            "no file of the patch matches the parts {:?} given for {name}",
            parts.unwrap_or_default()
        )));
    }
    Ok(TreePlan {
        tree,
        info,
        release,
        files,
        refused,
        unmatched,
        health_before,
    })
}

/// The release name backups are filed under when a tree's Nova version cannot be told.
pub(super) const UNKNOWN_RELEASE: &str = "unknown";

/// An original's bytes, the hooks' output from it, and the hooks used.
pub(super) type Original = (Vec<u8>, String, Vec<String>);

pub(super) struct PlanCtx<'a> {
    pub(super) tree: &'a dyn NovaTree,
    pub(super) backup_dir: &'a Path,
    pub(super) release: &'a str,
    pub(super) written: &'a BTreeMap<String, Written>,
}

/// A file's plan, or why it is refused (and, for an unsupported build, which hook did not match).
pub(super) type Planned<R> = Result<std::result::Result<FilePlan, R>>;

impl PlanCtx<'_> {
    /// A hooked file: Nova's own (the hooks apply to it, or it is refused) or our output
    /// (recognised from the kept original).
    pub(super) fn plan_hooked(
        &self,
        hf: &HookedFile,
        path: &str,
        state: PatchState,
    ) -> Planned<(String, Option<String>)> {
        let (t, rel, release) = (self.tree, hf.path.as_str(), self.release);
        let Some(current) = t.read_file(path)? else {
            return Ok(Err((
                format!("unsupported: {} is missing (Nova {release})", t.show(path)),
                Some(format!("{rel} missing")),
            )));
        };
        // Edited as text, written back as bytes: a file that is not UTF-8 is refused rather
        // than rewritten with replacement characters.
        let Ok(text) = std::str::from_utf8(&current) else {
            return Ok(Err((
                format!(
                    "unsupported: {} is not UTF-8 text (Nova {release})",
                    t.show(path)
                ),
                Some(format!("{rel} not UTF-8")),
            )));
        };
        let now = FilePlan {
            rel: rel.to_string(),
            path: path.to_string(),
            current: Some(current.clone()),
            target: Some(current.clone()),
            status: FileStatus::Unpatched,
            pristine: false,
            hooks: Vec::new(),
        };
        if text.contains(MARKER) {
            self.plan_ours(hf, now, state)
        } else {
            Ok(self.plan_pristine(hf, text, now, state))
        }
    }

    /// Nova's own file, whatever build: nothing to restore; the hooks apply, or it is refused.
    fn plan_pristine(
        &self,
        hf: &HookedFile,
        text: &str,
        now: FilePlan,
        state: PatchState,
    ) -> std::result::Result<FilePlan, (String, Option<String>)> {
        let now = FilePlan {
            pristine: true,
            ..now
        };
        if state == PatchState::Absent {
            return Ok(now);
        }
        match hf.apply(text) {
            Ok((out, used)) => Ok(FilePlan {
                target: Some(out.into_bytes()),
                status: FileStatus::WouldPatch,
                hooks: used,
                ..now
            }),
            Err(e) => Err((
                format!(
                    "unsupported: {} (Nova {}): {e}",
                    self.tree.show(&now.path),
                    self.release
                ),
                Some(format!("{}: hook \"{}\"", now.rel, e.hook)),
            )),
        }
    }

    /// Our output (this build or an earlier one, as written.json records it), recognised from
    /// the kept original: kept, updated, or restored to that original.
    fn plan_ours(
        &self,
        hf: &HookedFile,
        now: FilePlan,
        state: PatchState,
    ) -> Planned<(String, Option<String>)> {
        let (t, path, rel) = (self.tree, now.path.as_str(), now.rel.as_str());
        let current = now.current.as_deref().unwrap_or_default();
        let cur_sha = sha256_hex(current);
        let recorded = self.written.get(rel).map(|w| w.patched_sha256.as_str()) == Some(&cur_sha);
        let Some((orig, out, used)) = self.original(hf, path)? else {
            return Ok(Err((
                format!(
                    "{} holds numa-repin hooks, but no original is kept ({} nor {}) from which to \
                 rebuild or restore it; {}",
                    t.show(path),
                    backup_path(self.backup_dir, &t.backup_key(), self.release, rel).display(),
                    orig_path(path),
                    t.reinstall_hint()
                ),
                None,
            )));
        };
        let ours_now = out.as_bytes() == current;
        if !ours_now && !recorded {
            return Ok(Err((
                format!(
                    "{} holds numa-repin hooks that neither this patch nor a recorded earlier \
                 rollout wrote (edited by hand?); {}",
                    t.show(path),
                    t.reinstall_hint()
                ),
                None,
            )));
        }
        Ok(Ok(match state {
            PatchState::Absent => FilePlan {
                target: Some(orig),
                status: FileStatus::WouldRestore,
                ..now
            },
            PatchState::Present if ours_now => FilePlan {
                status: FileStatus::Patched,
                hooks: used,
                ..now
            },
            PatchState::Present => FilePlan {
                target: Some(out.into_bytes()),
                status: FileStatus::WouldUpdate,
                hooks: used,
                ..now
            },
        }))
    }

    /// The original a hooked file was patched from: the host backup, else the in-tree copy,
    /// the first that is unpatched and that the hooks apply to; with what they make of it.
    pub(super) fn original(&self, hf: &HookedFile, path: &str) -> Result<Option<Original>> {
        let t = self.tree;
        let host = backup_path(self.backup_dir, &t.backup_key(), self.release, &hf.path);
        let from_host = limits::read_bytes("backup", &host, limits::MAX_SOURCE_BYTES).ok();
        for data in [from_host, t.read_file(&orig_path(path))?]
            .into_iter()
            .flatten()
        {
            let Ok(text) = std::str::from_utf8(&data) else {
                continue;
            };
            if text.contains(MARKER) {
                continue;
            }
            if let Ok((out, used)) = hf.apply(text) {
                return Ok(Some((data, out, used)));
            }
        }
        Ok(None)
    }

    pub(super) fn plan_core(&self, core: &[u8], path: &str, state: PatchState) -> Planned<String> {
        let t = self.tree;
        let current = t.read_file(path)?;
        let recorded = |c: &[u8]| {
            self.written.get(CORE).map(|w| w.patched_sha256.as_str()) == Some(&sha256_hex(c))
        };
        let ours = current.as_deref().is_some_and(|c| c == core || recorded(c));
        if current.is_some() && !ours {
            return Ok(Err(format!(
                "{} is not the numa-repin core this patch or a recorded earlier rollout wrote \
                 (edited by hand?); remove it or {}",
                t.show(path),
                t.reinstall_hint()
            )));
        }
        let (target, status) = match (state, current.as_deref()) {
            (PatchState::Absent, None) => (None, FileStatus::Unpatched),
            (PatchState::Absent, Some(_)) => (None, FileStatus::WouldRemove),
            (PatchState::Present, None) => (Some(core.to_vec()), FileStatus::WouldPatch),
            (PatchState::Present, Some(c)) if c == core => {
                (Some(core.to_vec()), FileStatus::Patched)
            }
            (PatchState::Present, Some(_)) => (Some(core.to_vec()), FileStatus::WouldUpdate),
        };
        Ok(Ok(FilePlan {
            rel: CORE.to_string(),
            path: path.to_string(),
            current,
            target,
            status,
            pristine: false,
            hooks: Vec::new(),
        }))
    }
}
