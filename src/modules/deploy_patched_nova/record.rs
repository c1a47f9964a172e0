//! What the rollout keeps on the host: the pristine originals (`backup_dir`, and the in-tree
//! `.numa-repin.orig` copy) and `written.json`, the checksums of what it wrote.

use super::args::PatchState;
use super::plan::TreePlan;
use crate::io::container::sha256_hex;
use crate::limits;
use anyhow::{Context as _, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
/// The in-tree copy of a pristine file, next to it.
pub(super) fn orig_path(path: &str) -> String {
    format!("{path}.numa-repin.orig")
}

/// `<backup_dir>/<tree's backup key>/<release>/nova/<rel>`.
pub(super) fn backup_path(dir: &Path, key: &str, release: &str, rel: &str) -> PathBuf {
    dir.join(key).join(release).join("nova").join(rel)
}

/// `<backup_dir>/<tree's backup key>/<release>/written.json`: per file, the sha256 of the
/// original (null for the core, which Nova lacks) and of what this module wrote, so a rerun and
/// a later build of the patch recognise (and update or remove) an earlier rollout.
pub(super) fn written_path(dir: &Path, key: &str, release: &str) -> PathBuf {
    dir.join(key).join(release).join("written.json")
}

#[derive(serde::Serialize, Deserialize, Debug, Clone)]
pub(super) struct Written {
    pub(super) original_sha256: Option<String>,
    pub(super) patched_sha256: String,
}

/// written.json as earlier releases of this module wrote it (`{path: patched sha256}`) or as
/// this one does: a host patched by an earlier release can still be updated and rolled back.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WrittenEntry {
    Now(Written),
    Before(String),
}

pub(super) fn load_written(dir: &Path, key: &str, release: &str) -> BTreeMap<String, Written> {
    limits::read_text(
        "written.json",
        &written_path(dir, key, release),
        limits::MAX_FILE_BYTES,
    )
    .ok()
    .and_then(|t| serde_json::from_str::<BTreeMap<String, WrittenEntry>>(&t).ok())
    .map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let w = match v {
                    WrittenEntry::Now(w) => w,
                    WrittenEntry::Before(sha) => Written {
                        original_sha256: None,
                        patched_sha256: sha,
                    },
                };
                (k, w)
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(super) fn record_written(dir: &Path, p: &TreePlan, state: PatchState) -> Result<()> {
    let path = written_path(dir, &p.tree.backup_key(), &p.release);
    if state == PatchState::Absent {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let old = load_written(dir, &p.tree.backup_key(), &p.release);
    let map: BTreeMap<&str, Written> = p
        .files
        .iter()
        .filter_map(|f| {
            let target = f.target.as_deref()?;
            let original = if f.pristine {
                f.current.as_deref().map(sha256_hex)
            } else {
                old.get(&f.rel).and_then(|w| w.original_sha256.clone())
            };
            Some((
                f.rel.as_str(),
                Written {
                    original_sha256: original,
                    patched_sha256: sha256_hex(target),
                },
            ))
        })
        .collect();
    std::fs::create_dir_all(path.parent().context("written path")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&map)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
