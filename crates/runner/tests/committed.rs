//! Every committed run is rebuilt from its raw rows: a copy without its aggregates, given to
//! `editbench report` (and `editbench claims` where claims are committed), gives back the
//! committed summary.csv and curves.csv (every number within 1e-12), table.md and claims.json.
//! Needs nothing but the clone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The committed runs that keep raw rows.
fn runs_with_rows() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("results/committed"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let has_rows = |d: &Path| {
        std::fs::read_dir(d.join("cells"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".csv.gz"))
    };
    dirs.into_iter().filter(|d| d.join("manifest.json").is_file() && has_rows(d)).collect()
}

/// Two CSV texts equal cell by cell, numbers within 1e-12 (relative to their size).
fn assert_csv_close(a: &str, b: &str, what: &str) {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(la.len(), lb.len(), "{what}: line counts");
    for (x, y) in la.iter().zip(&lb) {
        for (p, q) in x.split(',').zip(y.split(',')) {
            match (p.parse::<f64>(), q.parse::<f64>()) {
                (Ok(u), Ok(v)) => {
                    assert!((u - v).abs() <= 1e-12 * u.abs().max(1.0), "{what}: {x} vs {y}")
                }
                _ => assert_eq!(p, q, "{what}: {x} vs {y}"),
            }
        }
    }
}

#[test]
fn every_committed_run_is_rebuilt_from_its_raw_rows() {
    let runs = runs_with_rows();
    assert!(runs.len() >= 8, "committed runs with raw rows: {runs:?}");
    let tmp = tempfile::tempdir().unwrap();
    for dir in &runs {
        let name = dir.file_name().unwrap();
        let copy = tmp.path().join(name);
        copy_dir(dir, &copy);
        for file in ["summary.csv", "curves.csv", "table.md", "claims.md", "claims.json"] {
            let _ = std::fs::remove_file(copy.join(file));
        }
        let o = Command::new(env!("CARGO_BIN_EXE_editbench"))
            .args(["report", copy.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&o.stderr));
        for file in ["summary.csv", "curves.csv"] {
            let committed = dir.join(file);
            if committed.is_file() {
                let rebuilt = std::fs::read_to_string(copy.join(file))
                    .unwrap_or_else(|e| panic!("{}/{file}: {e}", copy.display()));
                assert_csv_close(
                    &std::fs::read_to_string(&committed).unwrap(),
                    &rebuilt,
                    &format!("{}/{file}", dir.display()),
                );
            }
        }
        let table = std::fs::read_to_string(copy.join("table.md")).unwrap();
        assert_eq!(
            table,
            std::fs::read_to_string(dir.join("table.md")).unwrap(),
            "{}/table.md",
            dir.display()
        );
        if dir.join("claims.json").is_file() {
            let o = Command::new(env!("CARGO_BIN_EXE_editbench"))
                .args(["claims", copy.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{}: {}",
                dir.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            let json = |d: &Path| -> serde_json::Value {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(d.join("claims.json")).unwrap())
                        .unwrap();
                v["run"] = serde_json::Value::Null;
                v
            };
            assert_eq!(json(&copy), json(dir), "{}/claims.json", dir.display());
        }
    }
}

/// The generated blocks of README.md and docs/*.md equal the result files they name.
#[test]
fn generated_documentation_blocks_are_up_to_date() {
    let o = Command::new(env!("CARGO_BIN_EXE_editbench"))
        .args(["docs", "--check"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
