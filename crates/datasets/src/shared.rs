//! The project's shared data (`../shared/data` beside the checkout): complete benchmark files that
//! a user's clone does not have. Tests that need them call [`shared_data`], which hands out the
//! path where the file exists and otherwise records the test as skipped — visibly, never as a
//! silent pass: a line on stderr, and one in the file named by `EDITBENCH_SKIPS` (the test
//! command counts them in its closing line). Under `CI=true`, where the shared data must exist, a
//! missing file fails the test instead.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shared data folder of a checkout at `root` (the workspace root).
pub fn shared_root(root: &Path) -> PathBuf {
    root.join("../shared/data")
}

/// `<root>/../shared/data/<rel>` when it exists; otherwise `None`, after recording the calling
/// test as skipped (or panicking under `CI=true`).
pub fn shared_data(root: &Path, rel: &str) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let log = std::env::var_os("EDITBENCH_SKIPS").map(PathBuf::from);
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    find_or_skip(root, rel, &test, ci, log.as_deref())
}

fn find_or_skip(
    root: &Path,
    rel: &str,
    test: &str,
    ci: bool,
    log: Option<&Path>,
) -> Option<PathBuf> {
    let path = shared_root(root).join(rel);
    if path.exists() {
        return Some(path);
    }
    let reason = format!("needs the shared data file ../shared/data/{rel}");
    if ci {
        panic!("{test}: {reason}, which CI must have ({} is missing)", path.display());
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = log {
        let line = format!("{test}: {reason}\n");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log);
        if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
            eprintln!("cannot record the skip in {}: {e}", log.display());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_recorded_as_skipped_and_fails_under_ci() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkout");
        std::fs::create_dir_all(dir.path().join("shared/data/zsre")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("shared/data/zsre/z.json"), "[]").unwrap();
        let log = dir.path().join("skips");
        let found = find_or_skip(&root, "zsre/z.json", "t0", true, Some(&log));
        assert_eq!(found, Some(shared_root(&root).join("zsre/z.json")));
        assert_eq!(find_or_skip(&root, "x.json", "t1", false, Some(&log)), None);
        assert_eq!(find_or_skip(&root, "y.json", "t2", false, Some(&log)), None);
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            lines,
            "t1: needs the shared data file ../shared/data/x.json\n\
             t2: needs the shared data file ../shared/data/y.json\n"
        );
        let ci = std::panic::catch_unwind(|| find_or_skip(&root, "x.json", "t3", true, None));
        assert!(ci.is_err());
    }
}
