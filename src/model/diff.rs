//! Line diffs of two texts, the one place they are made: a unified diff with file labels
//! (`deploy_patched_nova`'s `--diff`, the shape of `diff -u --label A --label B`) and the changed
//! lines alone (`repin_migrate`'s `xml_diff`). On the `similar` crate (Myers), in-process.

use similar::{capture_diff_slices, Algorithm, ChangeTag, TextDiff};

/// The unified diff of `before` and `after` with 3 lines of context, headed `--- before_label`
/// and `+++ after_label` (a missing final newline is marked as `diff -u` marks it); empty when
/// the texts are equal.
pub fn unified(before: &str, after: &str, before_label: &str, after_label: &str) -> String {
    TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(before_label, after_label)
        .to_string()
}

/// The changed lines alone, compared as `str::lines` splits them (line ends and a missing final
/// newline do not count): `-old` and `+new`, in order (per change, the removed lines before the
/// added ones); no headers, no context. Empty when equal.
pub fn changed_lines(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut out = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, &a, &b) {
        for c in op.iter_changes(&a, &b) {
            match c.tag() {
                ChangeTag::Equal => {}
                ChangeTag::Delete => out.push(format!("-{}", c.value())),
                ChangeTag::Insert => out.push(format!("+{}", c.value())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_has_labels_hunks_and_context() {
        let t = unified("a\nb\nc\n", "a\nx\nc\n", "f:before", "f (after)");
        assert_eq!(
            t,
            "--- f:before\n+++ f (after)\n@@ -1,3 +1,3 @@\n a\n-b\n+x\n c\n"
        );
        assert_eq!(unified("same\n", "same\n", "a", "b"), "");
    }

    #[test]
    fn unified_new_and_removed_files_as_diff_u() {
        let t = unified("", "x\ny\n", "p", "p (after)");
        assert_eq!(t, "--- p\n+++ p (after)\n@@ -0,0 +1,2 @@\n+x\n+y\n");
        let t = unified("x\n", "", "p", "p (removed)");
        assert_eq!(t, "--- p\n+++ p (removed)\n@@ -1 +0,0 @@\n-x\n");
        let t = unified("a\n", "a", "p", "q");
        assert!(t.contains("\\ No newline at end of file"), "{t}");
    }

    #[test]
    fn changed_lines_only() {
        let d = changed_lines("a\nb\nc\nd\n", "a\nB\nc\nd\ne");
        assert_eq!(d, ["-b", "+B", "+e"]);
        assert!(changed_lines("a\r\nb\r\n", "a\nb").is_empty());
        assert_eq!(changed_lines("a\r\n", "b\r\n"), ["-a", "+b"]);
    }
}
