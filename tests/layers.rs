//! The layers of ARCHITECTURE.md, checked: what each part of `src/` may name of the crate.
use std::fs;
use std::path::{Path, PathBuf};

/// (part of src/, the crate paths it must not name, why).
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "model",
        &["fit", "io", "nova", "facts", "modules", "ansible"],
        "the model is pure: text and values in, values out",
    ),
    (
        "fit",
        &["io", "nova", "facts", "modules", "ansible"],
        "the engine decides from values; it reads nothing",
    ),
    (
        "nova",
        &["io", "facts", "modules", "ansible"],
        "Nova's formats and its DB, no libvirt and no module",
    ),
    (
        "io",
        &["fit", "nova", "facts", "modules", "ansible"],
        "adapters to the outside know the model only",
    ),
    (
        "facts.rs",
        &["modules", "ansible"],
        "a host's facts serve every module",
    ),
    (
        "limits.rs",
        &["fit", "io", "nova", "facts", "modules", "ansible"],
        "input bounds know the model only",
    ),
    (
        "ansible.rs",
        &["fit", "io", "nova", "facts", "model"],
        "the runtime knows no module's business",
    ),
];

fn rs_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            rs_files(&e.path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// The crate paths a file names in code (comments left out).
fn named(file: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((i + 1, name));
        }
    }
    out
}

#[test]
fn each_layer_names_only_what_is_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (part, forbidden, why) in RULES {
        let mut files = Vec::new();
        rs_files(&src.join(part), &mut files);
        assert!(
            !files.is_empty(),
            "src/{part} has no Rust file: update RULES"
        );
        for f in &files {
            for (line, name) in named(f) {
                if forbidden.contains(&name.as_str()) {
                    bad.push(format!(
                        "{}:{line} names crate::{name} ({why})",
                        f.display()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn no_module_names_another() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/modules");
    let mut bad = Vec::new();
    for e in fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        let me = e.file_name().to_string_lossy().into_owned();
        let mut files = Vec::new();
        rs_files(&e.path(), &mut files);
        for f in &files {
            let text = fs::read_to_string(f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if let Some(at) = code.find("crate::modules::") {
                    let other: String = code[at + 16..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if other != me {
                        bad.push(format!("{}:{} names module {other}", f.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a module uses another module's code (move it below):\n{}",
        bad.join("\n")
    );
}
