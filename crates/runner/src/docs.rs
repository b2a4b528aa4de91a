//! `editbench docs`: the result numbers in the documentation are generated, never typed. A block
//!
//! ```text
//! <!-- editbench:include results/committed/smollm2-quick-answers/table.md -->
//! …
//! <!-- editbench:end -->
//! ```
//!
//! holds the named file (a table or claims file that `editbench report` / `editbench claims`
//! wrote from raw rows), path relative to the repository root. `editbench docs` fills every block;
//! `--check` only reports the blocks that differ from their file (CI runs it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const OPEN: &str = "<!-- editbench:include ";
const CLOSE: &str = "<!-- editbench:end -->";

/// `text` with every block refilled from its file under `root`; errors name the document and line.
pub fn regenerate(doc: &Path, text: &str, root: &Path) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        out += line;
        out.push('\n');
        let Some(rest) = line.trim().strip_prefix(OPEN) else { continue };
        let Some(source) = rest.strip_suffix("-->").map(str::trim) else {
            bail!("{}:{}: an include line ends with `-->`", doc.display(), i + 1);
        };
        let path = root.join(source);
        let body = std::fs::read_to_string(&path).with_context(|| {
            format!("{}:{}: including {}", doc.display(), i + 1, path.display())
        })?;
        out += body.trim_end();
        out.push('\n');
        if !lines.by_ref().any(|(_, l)| l.trim() == CLOSE) {
            bail!("{}:{}: the block of {source} has no `{CLOSE}` line", doc.display(), i + 1);
        }
        out += CLOSE;
        out.push('\n');
    }
    Ok(out)
}

/// The documents `editbench docs` fills by default: README.md and docs/*.md.
pub fn default_documents(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

/// Fills (or with `check`, compares) the blocks of `documents`; returns the documents that differ.
pub fn run(documents: &[PathBuf], root: &Path, check: bool) -> Result<Vec<PathBuf>> {
    let mut differ = Vec::new();
    for doc in documents {
        let text =
            std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
        let new = regenerate(doc, &text, root)?;
        if new != text {
            differ.push(doc.clone());
            if !check {
                crate::output::write_atomic(doc, new.as_bytes())?;
            }
        }
    }
    Ok(differ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_filled_from_their_files_and_damaged_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.md"), "| a |\n| 1 |\n").unwrap();
        let doc = Path::new("README.md");
        let text = "intro\n<!-- editbench:include t.md -->\nstale\n<!-- editbench:end -->\nend\n";
        let filled = regenerate(doc, text, dir.path()).unwrap();
        assert_eq!(
            filled,
            "intro\n<!-- editbench:include t.md -->\n| a |\n| 1 |\n<!-- editbench:end -->\nend\n"
        );
        assert_eq!(regenerate(doc, &filled, dir.path()).unwrap(), filled);
        let open = regenerate(doc, "<!-- editbench:include t.md -->\nx\n", dir.path()).unwrap_err();
        assert!(format!("{open:#}").contains("README.md:1: the block of t.md has no"), "{open:#}");
        let missing = regenerate(
            doc,
            "<!-- editbench:include none.md -->\n<!-- editbench:end -->\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(format!("{missing:#}").contains("README.md:1: including"), "{missing:#}");
    }
}
