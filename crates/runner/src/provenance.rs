//! Where a cell's numbers come from: per invocation that ran part of it (a *segment*: the whole
//! cell, or the rounds of a sequential cell between two resumptions) the exact source revision of
//! the binary (commit, whether the code differed from it and a hash of that difference), its
//! version and cargo features, the backend and device, the CPU and threads, and when it ran.
//! Writing into `results/committed/` from a binary built from changed code needs `--allow-dirty`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The commit the binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = match option_env!("EDITBENCH_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};
/// Whether the code (crates/, vendor/, Cargo.toml, Cargo.lock) differed from [`COMMIT`].
pub fn dirty() -> bool {
    option_env!("EDITBENCH_GIT_DIRTY") == Some("true")
}
/// sha256 of that difference (`git diff HEAD` of the code and its untracked files); empty when clean.
const DIFF_SHA256: &str = match option_env!("EDITBENCH_GIT_DIFF_SHA256") {
    Some(h) => h,
    None => "",
};

/// The revision as manifests name it: 12 hex digits of the commit, `-dirty` when the code differed.
pub fn revision() -> String {
    format!("{}{}", &COMMIT[..COMMIT.len().min(12)], if dirty() { "-dirty" } else { "" })
}

/// One invocation's part of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub commit: String,
    pub dirty: bool,
    /// sha256 of the uncommitted code change the binary was built with (`None` when clean).
    pub diff_sha256: Option<String>,
    pub editbench_version: String,
    pub features: Vec<String>,
    pub backend: String,
    pub device: String,
    pub cpu: String,
    pub threads: usize,
    /// UTC, RFC 3339.
    pub started: String,
    pub ended: Option<String>,
    /// Sequential cells: the rounds done before this segment began and when it ended.
    pub rounds: Option<[usize; 2]>,
    /// The run was let write into results/committed/ from changed code (`--allow-dirty`).
    pub allow_dirty: bool,
}

impl Segment {
    /// A segment starting now on `backend`/`device`, after `rounds_done` rounds.
    pub fn begin(
        backend: &str,
        device: &str,
        rounds_done: Option<usize>,
        allow_dirty: bool,
    ) -> Self {
        Segment {
            commit: COMMIT.to_string(),
            dirty: dirty(),
            diff_sha256: dirty().then(|| DIFF_SHA256.to_string()),
            editbench_version: env!("CARGO_PKG_VERSION").to_string(),
            features: features(),
            backend: backend.to_string(),
            device: device.to_string(),
            cpu: cpu_model(),
            threads: rayon::current_num_threads(),
            started: utc_now(),
            ended: None,
            rounds: rounds_done.map(|r| [r, r]),
            allow_dirty,
        }
    }

    /// Ends the segment now, after `rounds_done` rounds for a sequential cell.
    pub fn end(mut self, rounds_done: usize) -> Self {
        self.ended = Some(utc_now());
        if let Some(r) = &mut self.rounds {
            r[1] = rounds_done;
        }
        self
    }
}

/// The cargo features compiled in.
pub fn features() -> Vec<String> {
    let all = [("wgpu", cfg!(feature = "wgpu")), ("cuda", cfg!(feature = "cuda"))];
    all.iter().filter(|(_, on)| *on).map(|(f, _)| f.to_string()).collect()
}

/// The CPU's model name (Linux's /proc/cpuinfo), else the architecture.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| {
        l.strip_prefix("model name")
            .and_then(|r| r.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    name.unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc(secs)
}

/// `secs` after the Unix epoch as RFC 3339 UTC (days to civil date: H. Hinnant's algorithm).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Whether `out` lies in a `results/committed/` directory.
fn is_committed(out: &Path) -> bool {
    let parts: Vec<String> =
        out.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.windows(2).any(|w| w[0] == "results" && w[1] == "committed")
}

/// Refuses to write committed results with a binary built from changed code, unless allowed
/// (the permission is then recorded in every segment).
pub fn check_committed(out: &Path, allow_dirty: bool) -> Result<()> {
    if dirty() && is_committed(out) && !allow_dirty {
        bail!(
            "{}: committed results must come from a clean tree, but this binary was built from {} with uncommitted code \
             changes (diff sha256 {DIFF_SHA256}); commit them and rebuild, or pass --allow-dirty (recorded in every cell)",
            out.display(),
            &COMMIT[..COMMIT.len().min(12)]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_610_403), "2026-12-07T02:26:43Z");
    }

    #[test]
    fn committed_directories_are_recognised() {
        assert!(is_committed(Path::new("results/committed/smollm2-quick")));
        assert!(is_committed(Path::new("/x/results/committed/a/b")));
        assert!(!is_committed(Path::new("results/smollm2-quick")));
        assert!(!is_committed(Path::new("committed/results")));
    }

    #[test]
    fn a_segment_ends_with_its_rounds() {
        let s = Segment::begin("cpu", "Cpu", Some(3), false).end(7);
        assert_eq!(s.rounds, Some([3, 7]));
        assert!(s.ended.is_some());
        assert_eq!(s.dirty, s.diff_sha256.is_some());
    }
}
