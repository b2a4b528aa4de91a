//! Records the source revision of the build in the binary (written into every manifest and cell
//! record): the commit, whether the code differed from it, and a hash of the difference.

use std::process::Command;

use sha2::{Digest, Sha256};

/// What makes the binary; other files (results, docs, sweeps) do not make a build dirty.
const CODE: [&str; 4] = ["crates", "vendor", "Cargo.toml", "Cargo.lock"];

fn git(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git").args(args).current_dir("../..").output().ok()?;
    out.status.success().then_some(out.stdout)
}

fn main() {
    for path in [
        "../../.git/HEAD",
        "../../.git/index",
        "../../.git/refs",
        "../../crates",
        "../../vendor",
        "../../Cargo.toml",
        "../../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let Some(commit) = git(&["rev-parse", "HEAD"]) else { return };
    let commit = String::from_utf8_lossy(&commit).trim().to_string();
    let mut diff_args = vec!["diff", "HEAD", "--binary", "--"];
    diff_args.extend(CODE);
    let diff = git(&diff_args).unwrap_or_default();
    let mut untracked_args = vec!["ls-files", "--others", "--exclude-standard", "-z", "--"];
    untracked_args.extend(CODE);
    let untracked = git(&untracked_args).unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(&diff);
    for name in untracked.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        hash.update(name);
        hash.update(
            std::fs::read(
                std::path::Path::new("../..").join(String::from_utf8_lossy(name).as_ref()),
            )
            .unwrap_or_default(),
        );
    }
    let dirty = !diff.is_empty() || !untracked.is_empty();
    let short = &commit[..commit.len().min(12)];
    println!("cargo:rustc-env=EDITBENCH_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=EDITBENCH_GIT_DIRTY={dirty}");
    println!(
        "cargo:rustc-env=EDITBENCH_GIT_DIFF_SHA256={}",
        if dirty { hex(&hash.finalize()) } else { String::new() }
    );
    println!("cargo:rustc-env=EDITBENCH_GIT_REVISION={short}{}", if dirty { "-dirty" } else { "" });
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
