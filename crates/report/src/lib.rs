//! Sweep results → what goes into a paper: the tables of the paper's layout (Markdown, LaTeX
//! booktabs, terminal) and comparison plots (PNG and SVG), from one or several results
//! directories and optionally numbers typed from a paper, and a self-contained results page.

pub mod claims;
mod curves_table;
mod heatmap;
mod html;
mod load;
mod plot;
pub mod rows;
mod table;

pub use curves_table::curves_markdown;
pub use heatmap::{write_heatmap, HeatMap};
pub use load::{
    load_paper, load_run, read_csv, read_manifest, Curves, RowKey, Run, SolverNote, Summary,
};
pub use plot::{plot_all, Figure};
pub use table::{latex_table, markdown_table, Table};

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes tables, figures, `report.md` and `report.html` for `runs` into `out`; returns the
/// Markdown table.
pub fn write_report(runs: &[Run], out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let table = Table::new(runs);
    let markdown = markdown_table(&table);
    let latex = latex_table(&table);
    write(&out.join("table.md"), &markdown)?;
    write(&out.join("table.tex"), &latex)?;
    if let [run] = runs {
        if let Some(curves) = curves_markdown(run) {
            write(&out.join("curves.md"), &curves)?;
        }
    }
    let figures = plot_all(runs, &out.join("figures"))?;
    let notes = notes(runs);
    let mut report = String::from("# editbench report\n\n");
    report += &format!(
        "Runs: {}.\n\n",
        runs.iter()
            .map(|r| format!("`{}` ({})", r.label, r.source.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    report += &notes.iter().map(|n| format!("{n}\n\n")).collect::<String>();
    report += &markdown;
    report += "\nAs LaTeX (booktabs): [table.tex](table.tex); as a page with sortable tables: [report.html](report.html).\n\n## Figures\n\n";
    for f in &figures {
        let rel = |p: &PathBuf| p.strip_prefix(out).unwrap_or(p).display().to_string();
        report += &format!(
            "### {}\n\n![{}]({})\n\n[SVG]({})\n\n",
            f.title,
            f.title,
            rel(&f.png),
            rel(&f.svg)
        );
    }
    write(&out.join("report.md"), &report)?;
    html::write_html(runs, &table, &figures, &notes, out)?;
    Ok(markdown)
}

/// The paragraphs that explain the table (Markdown code spans allowed).
fn notes(runs: &[Run]) -> Vec<String> {
    let mut notes = vec![String::from(
        "Means ± standard error over records, ×100; S is the harmonic mean of ES, PS and NS (zsRE: of the three accuracies). \
         The first rows are the unedited models (`pre`). PPL is the perplexity on held-out text, DWNORM the Frobenius norm of \
         the accumulated update per edited layer and DWREL its ratio to the original weight's norm (×100), averaged over \
         layers and measured batches. Rows that pool several template seeds show the standard deviation of the per-seed means (σ); \
         cond. is the largest condition estimate of the systems solved and pinv whether any solve needed a pseudo-inverse.",
    )];
    for run in runs {
        if let Some((n, total)) = run.sample {
            notes.push(format!("`{}`: the scores rest on a sample of {n} of the {total} records of the sweep (the same records in every cell).", run.label));
        }
    }
    notes
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
