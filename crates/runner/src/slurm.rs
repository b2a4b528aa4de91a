//! `editbench slurm`: a sweep as a Slurm array job, one `editbench run --shard i/N` per task, and
//! a merge job that runs only when every task finished.
//!
//! The scripts are written into `OUT/slurm/` before anything is submitted (and only written with
//! `--dry-run`): `shards.sbatch` (the array; `--requeue`, so a task that loses its node is queued
//! again and resumes its shard from the finished cells and checkpoints), `merge.sbatch`
//! (`afterok` on the array: `editbench merge` + `editbench report` into `OUT/merged`) and
//! `failed.sbatch` (`afternotok`: names each shard whose task failed and the last error line of
//! its log, in `OUT/slurm/FAILED`). Each dependent job is cancelled by Slurm when its condition can
//! no longer hold (`--kill-on-invalid-dep=yes`), so exactly one of the two runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sweep::{self, Plan};

/// What `editbench slurm` is asked for.
#[derive(clap::Args, Debug)]
pub struct SlurmArgs {
    /// The sweep file (YAML).
    sweep: PathBuf,
    /// Array tasks; task i runs the cells with grid index ≡ i (mod N).
    #[arg(long)]
    shards: usize,
    /// Results directory (default results/<the sweep's name>/): shard i writes OUT/shard-i, the
    /// merge OUT/merged, the scripts and logs go to OUT/slurm.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a field of the sweep file (as `editbench run --set`), repeatable.
    #[arg(long = "set")]
    sets: Vec<String>,
    /// `#SBATCH --partition`.
    #[arg(long)]
    partition: Option<String>,
    /// `#SBATCH --gres` of each shard task, e.g. gpu:1.
    #[arg(long)]
    gres: Option<String>,
    /// `#SBATCH --time` of each shard task, e.g. 12:00:00.
    #[arg(long)]
    time: Option<String>,
    /// `#SBATCH --mem` of each shard task, e.g. 32G (see `editbench run --dry-run`'s memory plan).
    #[arg(long)]
    mem: Option<String>,
    /// `#SBATCH --cpus-per-task` of each shard task.
    #[arg(long)]
    cpus: Option<usize>,
    /// The editbench binary the jobs run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Write the scripts and print them with each shard's cells; submit nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Writes the scripts, prints the split and (without `--dry-run`) submits the three jobs.
pub fn slurm(args: SlurmArgs) -> Result<()> {
    if args.shards == 0 {
        bail!("--shards must be at least 1");
    }
    let plan = sweep::plan(&args.sweep, &args.sets)?;
    crate::run::records(&plan)?;
    if args.shards > plan.cells.len() {
        bail!(
            "--shards {}: the sweep has only {} cells, so some tasks would have nothing to run",
            args.shards,
            plan.cells.len()
        );
    }
    let out = absolute(
        &args.out.clone().unwrap_or_else(|| PathBuf::from("results").join(&plan.sweep.name)),
    )?;
    let dir = out.join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scripts = Scripts::new(&args, &plan, &out)?;
    for (name, text) in scripts.files() {
        crate::output::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    for shard in 0..args.shards {
        print!("{}", sweep::describe(&plan, Some((shard, args.shards))));
    }
    if args.dry_run {
        for (name, text) in scripts.files() {
            println!("--- {}\n{text}", dir.join(name).display());
        }
        return Ok(());
    }
    for shard in 0..args.shards {
        let _ = std::fs::remove_file(dir.join(format!("shard-{shard}.done")));
    }
    let _ = std::fs::remove_file(dir.join("FAILED"));
    let array = sbatch(&dir.join("shards.sbatch"), None)?;
    let merge = sbatch(&dir.join("merge.sbatch"), Some(&format!("afterok:{array}")))?;
    let failed = sbatch(&dir.join("failed.sbatch"), Some(&format!("afternotok:{array}")))?;
    let jobs = serde_json::json!({ "array": array, "merge": merge, "failed": failed });
    crate::output::write_atomic(&dir.join("jobs.json"), jobs.to_string().as_bytes())?;
    println!(
        "submitted array job {array} ({} shards), merge job {merge} (runs when every shard \
         finished), failure report {failed} (runs if one did not); results in {}",
        args.shards,
        out.join("merged").display()
    );
    Ok(())
}

/// The three job scripts.
struct Scripts {
    shards: String,
    merge: String,
    failed: String,
}

impl Scripts {
    fn new(args: &SlurmArgs, plan: &Plan, out: &Path) -> Result<Self> {
        let binary = match &args.binary {
            Some(b) => absolute(b)?,
            None => std::env::current_exe().context("locating the editbench binary")?,
        };
        let (bin, cwd) = (quote(&binary), quote(&std::env::current_dir()?));
        let logs = out.join("slurm");
        let name = format!("eb-{}", plan.sweep.name);
        let n = args.shards;
        let mut run = format!(
            "{bin} run {} --shard \"$SLURM_ARRAY_TASK_ID/{n}\" \
             --out {}/shard-\"$SLURM_ARRAY_TASK_ID\"",
            quote(&absolute(&args.sweep)?),
            quote(out)
        );
        for set in &args.sets {
            let _ = write!(run, " --set {}", quote(Path::new(set)));
        }
        let mut shards = header(&name, &logs.join("shard-%a.log"));
        let _ = writeln!(shards, "#SBATCH --array=0-{}\n#SBATCH --requeue", n - 1);
        for (flag, value) in [
            ("partition", args.partition.clone()),
            ("gres", args.gres.clone()),
            ("time", args.time.clone()),
            ("mem", args.mem.clone()),
            ("cpus-per-task", args.cpus.map(|c| c.to_string())),
        ] {
            if let Some(value) = value {
                let _ = writeln!(shards, "#SBATCH --{flag}={value}");
            }
        }
        let done = quote(&logs.join("shard-"));
        let _ = write!(
            shards,
            "set -euo pipefail\ncd {cwd}\necho \"shard $SLURM_ARRAY_TASK_ID/{n} on $(hostname), \
             restart ${{SLURM_RESTART_COUNT:-0}}\"\n{run}\n\
             touch {done}\"$SLURM_ARRAY_TASK_ID.done\"\n"
        );
        let dirs: String =
            (0..n).map(|i| format!(" {}", quote(&out.join(format!("shard-{i}"))))).collect();
        let merged = quote(&out.join("merged"));
        let mut merge = header(&format!("{name}-merge"), &logs.join("merge.log"));
        let partition = args.partition.iter().map(|p| format!("#SBATCH --partition={p}\n"));
        merge.extend(partition.clone());
        let _ = write!(
            merge,
            "set -euo pipefail\ncd {cwd}\n{bin} merge --out {merged}{dirs}\n{bin} report {merged}\n"
        );
        let mut failed = header(&format!("{name}-failed"), &logs.join("failed.log"));
        failed.extend(partition);
        let report = quote(&logs.join("FAILED"));
        let _ = write!(
            failed,
            "set -uo pipefail\n: > {report}\nfor i in $(seq 0 {}); do\n  \
             [ -f {logs}/shard-$i.done ] && continue\n  \
             last=$(grep -i error {logs}/shard-$i.log 2>/dev/null | tail -n 1)\n  \
             echo \"shard $i/{n} failed: ${{last:-no error line in its log}}\" | tee -a {report}\n\
             done\n",
            n - 1,
            logs = quote(&logs)
        );
        Ok(Self { shards, merge, failed })
    }

    fn files(&self) -> [(&'static str, &String); 3] {
        [
            ("shards.sbatch", &self.shards),
            ("merge.sbatch", &self.merge),
            ("failed.sbatch", &self.failed),
        ]
    }
}

/// The lines every script starts with.
fn header(name: &str, log: &Path) -> String {
    format!(
        "#!/bin/bash\n# Written by `editbench slurm`.\n#SBATCH --job-name={name}\n\
         #SBATCH --output={}\n#SBATCH --open-mode=append\n",
        log.display()
    )
}

/// `sbatch --parsable [--dependency=… --kill-on-invalid-dep=yes] SCRIPT`: the job id.
fn sbatch(script: &Path, dependency: Option<&str>) -> Result<String> {
    let mut command = Command::new("sbatch");
    command.arg("--parsable");
    if let Some(dependency) = dependency {
        command.arg(format!("--dependency={dependency}")).arg("--kill-on-invalid-dep=yes");
    }
    let output = command.arg(script).output().context("running sbatch (is Slurm installed?)")?;
    if !output.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(id.split(';').next().unwrap_or_default().to_string())
}

/// A path from the current directory, so that jobs find it wherever Slurm starts them.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// `path` as one shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_spaces_and_quotes() {
        assert_eq!(quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
