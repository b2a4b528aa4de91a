//! The sequential curves as one Markdown table (`curves.md`): a row per metric and cell, a column
//! per number of edits applied, the last with its standard error — what the docs quote.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::load::{Run, Summary};
use crate::table::{header, method_name};

/// The curves of `run` as Markdown, or `None` when it has none (a batch run).
pub fn curves_markdown(run: &Run) -> Option<String> {
    if run.curves.is_empty() {
        return None;
    }
    let edits: BTreeSet<usize> = run.curves.values().flat_map(|c| c.keys().copied()).collect();
    let metrics: BTreeSet<_> =
        run.curves.values().flat_map(|c| c.values().flat_map(|m| m.keys().copied())).collect();
    let mut out = String::from("| metric | cell |");
    for e in &edits {
        let _ = write!(out, " {e} |");
    }
    out += "\n|---|---|";
    out += &"---:|".repeat(edits.len());
    out += "\n";
    let last = edits.last().copied();
    for metric in metrics {
        for (key, curve) in &run.curves {
            let layers =
                if key.layers.is_empty() { String::new() } else { format!(" {}", key.layers) };
            let _ = write!(
                out,
                "| {} | {} {}{layers}, B = {} |",
                header(metric),
                method_name(&key.method),
                key.distribution,
                key.batch_size
            );
            for e in &edits {
                let value = curve.get(e).and_then(|m| m.get(&metric));
                let _ =
                    write!(out, " {} |", value.map_or("–".into(), |s| number(s, Some(*e) == last)));
            }
            out += "\n";
        }
    }
    Some(out)
}

/// A mean to one decimal (large ones, such as a collapsed model's perplexity, in scientific
/// notation), with its standard error where asked.
fn number(s: &Summary, with_error: bool) -> String {
    let fmt = |x: f64| if x.abs() >= 1e4 { format!("{x:.2e}") } else { format!("{x:.1}") };
    match (s.stderr, with_error) {
        (Some(e), true) => format!("{} ± {}", fmt(s.mean), fmt(e)),
        _ => fmt(s.mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_means_are_written_in_scientific_notation_and_errors_only_where_asked() {
        let s = |mean, stderr| Summary { mean, stderr, n: 10, seeds: None };
        assert_eq!(number(&s(96.25, Some(1.24)), true), "96.2 ± 1.2");
        assert_eq!(number(&s(96.25, Some(1.24)), false), "96.2");
        assert_eq!(number(&s(1_350_000.0, None), true), "1.35e6");
    }
}
