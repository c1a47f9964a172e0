//! The module's arguments, their defaults, and which files of the patch a target gets.

use crate::ansible::ModuleArgs;
use crate::limits;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Roll the in-band Nova patch into Kolla's Nova containers or a Nova directory on this
/// machine, or restore pristine Nova.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// A directory holding `hooks.toml` and `src/numa_repin_patch.py` (the layout of
    /// roles/nova_patch) to roll out instead of the hooks and core built into this module.
    pub patch_dir: Option<PathBuf>,
    /// `auto` (docker when it answers, else podman), `docker` or `podman`. Containers only.
    #[serde(default = "default_auto")]
    pub container_engine: String,
    /// Nova's version in the containers or under `path`: `auto` asks each container (with
    /// `path`, the package metadata next to it, `nova-*.dist-info/METADATA` or `nova*.egg-info`,
    /// else what `python` knows of it). Only reported and used to file the backups: the hooks
    /// are applied to whatever files the target holds, whichever release or build they are.
    #[serde(default = "default_auto")]
    pub release: String,
    /// Container name -> the parts of the nova package it gets (path prefixes inside the package;
    /// a prefix equal to a file path names that file). The default applies when `path` is not
    /// given; `containers` and `path` exclude each other.
    #[serde(default)]
    #[schemars(default = "default_containers_doc")]
    pub containers: Option<BTreeMap<String, Vec<String>>>,
    /// Instead of containers: a Nova package directory on this machine, patched in place (no
    /// container, no restart): the `nova` directory itself, holding `__init__.py`, e.g.
    /// `/opt/venv/lib/python3.7/site-packages/nova`. Excludes `containers`.
    pub path: Option<PathBuf>,
    /// With `path`: the systemd units that run from that Nova (`openstack-nova-compute`,
    /// `nova-compute`), restarted after the change when `restart` is true; each must be active
    /// before the run, and stay active (no restart of its own) for 5 s after it, within
    /// `health_timeout_s`, or the files are rolled back and the units restarted again.
    pub services: Option<Vec<String>>,
    /// With `path`: the parts of the nova package to patch (path prefixes as in `containers`).
    /// Default: every file of the patch set.
    pub parts: Option<Vec<String>>,
    /// `present`: patched files in place; `absent`: pristine files restored.
    #[serde(default)]
    pub state: PatchState,
    /// Restart the containers after changing their files (the health gate follows). With
    /// `path` not applicable: restart the services that run from it yourself.
    #[serde(default = "default_true")]
    pub restart: bool,
    /// Seconds a restarted container has to pass the health gate before the rollback; with
    /// `path`, the most each run of `python` (byte-compile, health import) may take.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_s: u64,
    /// Health gate: also require every patched module to import with Nova's Python (with
    /// `path`: `python -c 'import nova.x.y'`, the parent of `path` first on sys.path, from that
    /// very directory). Turn off only where Nova's modules cannot import outside their service
    /// (or, with `path`, when `python` lacks Nova's dependencies); a container's gate is then it
    /// running and its own healthcheck, when it has one.
    #[serde(default = "default_true")]
    pub health_import: bool,
    /// Host directory for the pristine originals, per container (or `path`) and release.
    #[serde(default = "default_backup_dir")]
    pub backup_dir: PathBuf,
    /// Nova's Python. In a container default: the Kolla venv's, else python3, else python. With
    /// `path`: an interpreter on this machine (default `python3` on PATH) that byte-compiles the
    /// files and runs the health import.
    pub python: Option<String>,
}

/// Arguments that do not go together; found before anything is read or changed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    #[error("`path` and `containers` exclude each other: give `path` to patch a Nova directory on this machine, or `containers` for Kolla containers; nothing was changed")]
    PathAndContainers,
    #[error(
        "`services` is empty: omit it when no service runs from `path`, or name its systemd units"
    )]
    EmptyServices,
    #[error("`parts` is empty: omit it to patch every file of the patch set, or name prefixes inside the nova package (compute/, numa_repin_patch.py)")]
    EmptyParts,
    #[error("`parts` goes with `path`; for containers give each its parts in `containers`")]
    PartsWithoutPath,
    #[error(
        "`services` goes with `path` (a host-installed Nova); containers are restarted themselves"
    )]
    ServicesWithoutPath,
    #[error("`containers` is empty: name the Nova containers to patch")]
    NoContainers,
    #[error("container {0} is given no parts of the patch")]
    NoParts(String),
}

impl Args {
    /// `path` (with `services`, `parts`) or containers, each combination complete.
    pub fn check_combination(&self) -> Result<(), ArgsError> {
        if self.path.is_some() {
            if self.containers.is_some() {
                return Err(ArgsError::PathAndContainers);
            }
            if self.services.as_ref().is_some_and(|s| s.is_empty()) {
                return Err(ArgsError::EmptyServices);
            }
            if self.parts.as_ref().is_some_and(|p| p.is_empty()) {
                return Err(ArgsError::EmptyParts);
            }
            return Ok(());
        }
        if self.parts.is_some() {
            return Err(ArgsError::PartsWithoutPath);
        }
        if self.services.is_some() {
            return Err(ArgsError::ServicesWithoutPath);
        }
        let containers = self.containers.clone().unwrap_or_else(default_containers);
        if containers.is_empty() {
            return Err(ArgsError::NoContainers);
        }
        match containers.iter().find(|(_, parts)| parts.is_empty()) {
            Some((c, _)) => Err(ArgsError::NoParts(c.clone())),
            None => Ok(()),
        }
    }
}

impl ModuleArgs for Args {
    fn validate(&self) -> std::result::Result<(), limits::Error> {
        limits::abs_dir("backup_dir", &self.backup_dir)
    }
}

#[derive(Deserialize, JsonSchema, Default, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum PatchState {
    #[default]
    Present,
    Absent,
}

pub(super) fn default_auto() -> String {
    "auto".into()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_health_timeout() -> u64 {
    60
}
pub(super) fn default_backup_dir() -> PathBuf {
    PathBuf::from("/var/lib/numa-repin/nova-patch-backup")
}
pub(super) fn default_containers_doc() -> Option<BTreeMap<String, Vec<String>>> {
    Some(default_containers())
}
pub(super) fn default_containers() -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(
        "nova_conductor".into(),
        vec![
            "conductor/".into(),
            "db/".into(),
            "numa_repin_patch.py".into(),
        ],
    );
    m.insert(
        "nova_compute".into(),
        vec![
            "compute/".into(),
            "virt/".into(),
            "numa_repin_patch.py".into(),
        ],
    );
    m
}

pub(super) fn matches(path: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|p| path == p || (p.ends_with('/') && path.starts_with(p.as_str())))
}
