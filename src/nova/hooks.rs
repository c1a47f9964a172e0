//! The in-band patch as this project ships it: our hooks into Nova's files
//! (`roles/nova_patch/hooks.toml`) and the core they call (`roles/nova_patch/src/numa_repin_patch.py`),
//! both built into the module. A hook is applied in place to whatever file the target really
//! holds (any point release, any distribution build): its anchor must occur exactly once, or the
//! file is refused with the hook named. No copy of a Nova file is needed or kept here.

use crate::limits;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;

/// The core's path inside the nova package.
pub const CORE: &str = "numa_repin_patch.py";
/// Every file the hooks write imports the core; Nova's own files never name it.
pub const MARKER: &str = "numa_repin_patch";

const BUILTIN_HOOKS: &str = include_str!("../../roles/nova_patch/hooks.toml");
const BUILTIN_CORE: &[u8] = include_bytes!("../../roles/nova_patch/src/numa_repin_patch.py");

#[derive(thiserror::Error, Debug)]
pub enum SpecError {
    #[error("cannot read {0}: {1}")]
    Unreadable(String, String),
    #[error("{0} is not valid: {1}")]
    Invalid(String, String),
}

/// A hook did not match the file it was applied to: the file is refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
#[error("hook \"{hook}\" does not match: {why}")]
pub struct Unmatched {
    pub hook: String,
    pub why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    hook: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    file: String,
    name: String,
    variant: Option<String>,
    anchor: Option<String>,
    absent: Option<String>,
    after: Option<String>,
    before: Option<String>,
    replace: Option<String>,
}

/// The patch: hooked files (in hook order) and the core's bytes.
#[derive(Debug)]
pub struct PatchSet {
    pub files: Vec<HookedFile>,
    pub core: Vec<u8>,
    /// Where it came from: `built in` or the `patch_dir` given.
    pub source: String,
}

#[derive(Debug)]
pub struct HookedFile {
    /// Relative to the nova package directory.
    pub path: String,
    hooks: Vec<Hook>,
}

#[derive(Debug)]
struct Hook {
    name: String,
    variants: Vec<Variant>,
}

#[derive(Debug)]
struct Variant {
    name: String,
    how: How,
}

#[derive(Debug)]
enum How {
    /// Matches when the text does not occur; edits nothing.
    Absent(String),
    /// The anchor (exactly once) becomes `new`.
    At { anchor: String, new: String },
}

impl How {
    /// None when this variant matches `text`, else why not.
    fn mismatch(&self, text: &str) -> Option<String> {
        match self {
            How::Absent(t) => text
                .contains(t.as_str())
                .then(|| format!("{:?} occurs", first_line(t))),
            How::At { anchor, .. } => match text.matches(anchor.as_str()).count() {
                1 => None,
                n => Some(format!(
                    "anchor {:?} found {n} times (want 1)",
                    first_line(anchor)
                )),
            },
        }
    }
}

fn first_line(s: &str) -> String {
    let l = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let more = s.trim().lines().count() > 1;
    format!("{l}{}", if more { " ..." } else { "" })
}

impl HookedFile {
    /// Every hook applied in order; the names of the variants used (`hook: variant`).
    pub fn apply(&self, text: &str) -> Result<(String, Vec<String>), Unmatched> {
        let mut out = text.to_string();
        let mut used = Vec::new();
        for h in &self.hooks {
            let results: Vec<Option<String>> =
                h.variants.iter().map(|v| v.how.mismatch(&out)).collect();
            let matching: Vec<&Variant> = h
                .variants
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_none())
                .map(|(v, _)| v)
                .collect();
            let v = match matching.as_slice() {
                [v] => *v,
                [] if h.variants.len() == 1 => {
                    return Err(Unmatched {
                        hook: h.name.clone(),
                        why: results[0].clone().unwrap_or_default(),
                    })
                }
                [] => {
                    let why = h
                        .variants
                        .iter()
                        .zip(&results)
                        .map(|(v, r)| format!("{}: {}", v.name, r.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(Unmatched {
                        hook: h.name.clone(),
                        why: format!("no variant matches ({why})"),
                    });
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|v| v.name.as_str()).collect();
                    return Err(Unmatched {
                        hook: h.name.clone(),
                        why: format!("more than one variant matches ({})", names.join(", ")),
                    });
                }
            };
            if let How::At { anchor, new } = &v.how {
                out = out.replacen(anchor.as_str(), new, 1);
            }
            used.push(if h.variants.len() > 1 {
                format!("{}: {}", h.name, v.name)
            } else {
                h.name.clone()
            });
        }
        Ok((out, used))
    }
}

impl PatchSet {
    /// The hooks and core built into this module. Parsed and validated by a unit test, so an
    /// error here means a broken build; the caller fails with it rather than panicking.
    pub fn builtin() -> Result<PatchSet, SpecError> {
        parse(
            BUILTIN_HOOKS,
            "built-in hooks.toml",
            BUILTIN_CORE.to_vec(),
            "built in",
        )
    }

    /// `<dir>/hooks.toml` and `<dir>/src/numa_repin_patch.py` (the layout of roles/nova_patch).
    pub fn load(dir: &Path) -> Result<PatchSet, SpecError> {
        let hp = dir.join("hooks.toml");
        let cp = dir.join("src").join(CORE);
        let hooks = limits::read_text("hooks", &hp, limits::MAX_FILE_BYTES)
            .map_err(|e| SpecError::Unreadable(hp.display().to_string(), e.to_string()))?;
        let core = limits::read_bytes("core", &cp, limits::MAX_SOURCE_BYTES)
            .map_err(|e| SpecError::Unreadable(cp.display().to_string(), e.to_string()))?;
        parse(
            &hooks,
            &hp.display().to_string(),
            core,
            &dir.display().to_string(),
        )
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .map(|f| f.path.as_str())
            .chain(std::iter::once(CORE))
    }
}

fn parse(text: &str, what: &str, core: Vec<u8>, source: &str) -> Result<PatchSet, SpecError> {
    let bad = |m: String| SpecError::Invalid(what.to_string(), m);
    let spec: Spec = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if core.is_empty() {
        return Err(bad("the core file is empty".into()));
    }
    let mut files: Vec<HookedFile> = Vec::new();
    for e in spec.hook {
        let variant = Variant {
            name: e.variant.clone().unwrap_or_default(),
            how: how_of(&e).map_err(bad)?,
        };
        add_variant(&mut files, &e.file, &e.name, variant);
    }
    for f in &files {
        check_file(f).map_err(bad)?;
    }
    if files.is_empty() {
        return Err(bad("no hooks".into()));
    }
    Ok(PatchSet {
        files,
        core,
        source: source.to_string(),
    })
}

/// What one `[[hook]]` entry does, checked: a plain path, exactly one way to edit, an edit
/// that changes something and names the core (or carries a `# numa-repin:` comment).
fn how_of(e: &Entry) -> Result<How, String> {
    let at = format!("hook {:?} of {}", e.name, e.file);
    if !plain_rel_path(&e.file) || e.file == CORE {
        return Err(format!(
            "{at}: file must be a plain relative .py path inside the nova package"
        ));
    }
    let how = match (&e.anchor, &e.absent, &e.after, &e.before, &e.replace) {
        (Some(a), None, Some(t), None, None) => How::At {
            anchor: a.clone(),
            new: format!("{a}{t}"),
        },
        (Some(a), None, None, Some(t), None) => How::At {
            anchor: a.clone(),
            new: format!("{t}{a}"),
        },
        (Some(a), None, None, None, Some(t)) => How::At {
            anchor: a.clone(),
            new: t.clone(),
        },
        (None, Some(t), None, None, None) => How::Absent(t.clone()),
        _ => {
            return Err(format!(
                "{at}: give `anchor` and one of `after`, `before`, `replace`; or `absent` alone"
            ))
        }
    };
    match &how {
        How::At { anchor, new } if anchor.trim().is_empty() || new == anchor => {
            Err(format!("{at}: the hook changes nothing"))
        }
        How::Absent(t) if t.trim().is_empty() => Err(format!("{at}: `absent` is empty")),
        How::At { new, .. } if !new.contains(MARKER) && !new.contains("numa-repin") => {
            Err(format!(
                "{at}: the inserted text must name numa_repin_patch or carry a `# numa-repin:` comment"
            ))
        }
        _ => Ok(how),
    }
}

/// File the variant under its file (in first-seen order) and hook (a new hook, or one more
/// variant of a hook named before).
fn add_variant(files: &mut Vec<HookedFile>, file: &str, hook: &str, variant: Variant) {
    let idx = match files.iter().position(|f| f.path == file) {
        Some(i) => i,
        None => {
            files.push(HookedFile {
                path: file.to_string(),
                hooks: Vec::new(),
            });
            files.len() - 1
        }
    };
    let hooks = &mut files[idx].hooks;
    match hooks.iter_mut().find(|h| h.name == hook) {
        Some(h) => h.variants.push(variant),
        None => hooks.push(Hook {
            name: hook.to_string(),
            variants: vec![variant],
        }),
    }
}

/// A hooked file as a whole: its first hook imports the core, variants have distinct names.
fn check_file(f: &HookedFile) -> Result<(), String> {
    // The marker is how a rerun knows its own output: every hooked file gets it.
    let first = &f.hooks[0];
    if !first
        .variants
        .iter()
        .all(|v| matches!(&v.how, How::At { new, .. } if new.contains(MARKER)))
    {
        return Err(format!(
            "{}: its first hook must import numa_repin_patch",
            f.path
        ));
    }
    for h in &f.hooks {
        let names: BTreeSet<&str> = h.variants.iter().map(|v| v.name.as_str()).collect();
        if h.variants.len() > 1 && (names.len() != h.variants.len() || names.contains("")) {
            return Err(format!(
                "hook {:?} of {}: its variants need distinct `variant` names",
                h.name, f.path
            ));
        }
    }
    Ok(())
}

/// Hook paths go into container paths and commands: relative, plain, no `..`.
pub fn plain_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.ends_with(".py")
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> Result<PatchSet, SpecError> {
        parse(text, "t.toml", b"x = 1\n".to_vec(), "test")
    }

    #[test]
    fn builtin_parses_and_covers_nova_services() {
        let p = parse(
            BUILTIN_HOOKS,
            "hooks.toml",
            BUILTIN_CORE.to_vec(),
            "built in",
        )
        .unwrap();
        let paths: Vec<&str> = p.paths().collect();
        assert_eq!(
            paths,
            [
                "conductor/tasks/live_migrate.py",
                "virt/libvirt/driver.py",
                "compute/manager.py",
                "compute/resource_tracker.py",
                CORE
            ]
        );
        assert!(PatchSet::builtin().unwrap().source == "built in");
    }

    const IMPORT: &str = r#"[[hook]]
file = "a.py"
name = "import"
anchor = "import os\n"
after = "from nova import numa_repin_patch\n"
"#;

    #[test]
    fn anchors_must_occur_once() {
        let p = set(IMPORT).unwrap();
        let (t, used) = p.files[0].apply("import os\nx = 1\n").unwrap();
        assert_eq!(t, "import os\nfrom nova import numa_repin_patch\nx = 1\n");
        assert_eq!(used, ["import"]);
        let e = p.files[0].apply("x = 1\n").unwrap_err();
        assert!(e.to_string().contains("found 0 times"), "{e}");
        let e = p.files[0].apply("import os\nimport os\n").unwrap_err();
        assert!(e.to_string().contains("found 2 times"), "{e}");
    }

    #[test]
    fn exactly_one_variant() {
        let text = format!(
            r##"{IMPORT}[[hook]]
file = "a.py"
name = "h"
variant = "new"
anchor = "def f(): pass\n"
after = "# numa-repin: x\n"
[[hook]]
file = "a.py"
name = "h"
variant = "old"
absent = "def f("
"##
        );
        let p = set(&text).unwrap();
        let (t, used) = p.files[0].apply("import os\ndef f(): pass\n").unwrap();
        assert!(t.ends_with("def f(): pass\n# numa-repin: x\n"), "{t}");
        assert_eq!(used[1], "h: new");
        let (t, used) = p.files[0].apply("import os\n").unwrap();
        assert_eq!(t, "import os\nfrom nova import numa_repin_patch\n");
        assert_eq!(used[1], "h: old");
        // changed code under the anchor: neither variant, refused with both reasons
        let e = p.files[0].apply("import os\ndef f(a): pass\n").unwrap_err();
        assert_eq!(e.hook, "h");
        assert!(
            e.why.contains("new: anchor") && e.why.contains("old: \"def f(\" occurs"),
            "{e}"
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for (t, want) in [
            ("[[hook]]\nfile = \"../a.py\"\nname = \"x\"\nanchor = 'a'\nafter = 'numa_repin_patch'\n", "plain relative"),
            ("[[hook]]\nfile = \"a.py\"\nname = \"x\"\nanchor = 'a'\n", "give `anchor`"),
            ("[[hook]]\nfile = \"a.py\"\nname = \"x\"\nanchor = 'a'\nafter = 'b'\nbefore = 'c'\n", "give `anchor`"),
            ("[[hook]]\nfile = \"a.py\"\nname = \"x\"\nanchor = 'a'\nafter = 'b'\n", "must name numa_repin_patch"),
            ("[[hook]]\nfile = \"a.py\"\nname = \"x\"\nanchor = 'a'\nafter = '# numa-repin: b'\n", "first hook must import"),
            ("[[hook]]\nfile = \"a.py\"\nname = \"x\"\nbogus = 1\n", "unknown field"),
            ("hook = 3\n", "invalid type"),
        ] {
            let e = set(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
        let e = PatchSet::load(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read /nonexistent/hooks.toml"), "{e}");
    }

    #[test]
    fn plain_paths() {
        for bad in [
            "/etc/passwd.py",
            "../x.py",
            "a/../../b.py",
            "a b.py",
            "a;rm.py",
            "x.sh",
            "",
        ] {
            assert!(!plain_rel_path(bad), "{bad}");
        }
        assert!(plain_rel_path("virt/libvirt/driver.py"));
    }
}
