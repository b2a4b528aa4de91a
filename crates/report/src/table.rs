//! The paper's table layout: the unedited rows first, then method × distribution × batch size per
//! model; columns ES PS NS S GE RS (+ EM PM NM, accuracies) that have data; one row per run when
//! several runs are compared, followed by the differences to the first run.

use editbench_metrics::Metric;

use crate::load::{RowKey, Run, Summary};

/// The metric columns in the papers' order.
const ORDER: [Metric; 15] = [
    Metric::ES, Metric::PS, Metric::NS, Metric::S, Metric::GE, Metric::RS, Metric::EM, Metric::PM, Metric::NM, Metric::EA, Metric::PA, Metric::NA,
    Metric::RewriteAcc, Metric::ParaphraseAcc, Metric::NeighborhoodAcc,
];

/// Cells of the table, ready to format.
pub struct Table {
    pub columns: Vec<Metric>,
    /// (run label, model, method, distribution, batch size, values per column).
    pub rows: Vec<(String, String, String, String, String, Vec<Option<Summary>>)>,
    /// Differences to the first run: (run label, model, method, distribution, batch size, Δ per column).
    pub differences: Vec<(String, String, String, String, String, Vec<Option<f64>>)>,
    pub runs: usize,
}

impl Table {
    pub fn new(runs: &[Run]) -> Self {
        let has = |m: &Metric| runs.iter().any(|r| r.post.values().chain(r.pre.values()).any(|s| s.contains_key(m)));
        let columns: Vec<Metric> = ORDER.into_iter().filter(has).collect();
        let mut models: Vec<&String> = runs.iter().flat_map(|r| r.pre.keys().chain(r.post.keys().map(|k| &k.model))).collect();
        models.sort();
        models.dedup();
        let mut keys: Vec<&RowKey> = runs.iter().flat_map(|r| r.post.keys()).collect();
        keys.sort_by_key(|k| (&k.model, method_rank(&k.method), &k.method, &k.distribution, k.batch_size));
        keys.dedup();
        let mut rows = Vec::new();
        let mut differences = Vec::new();
        let values = |m: Option<&std::collections::BTreeMap<Metric, Summary>>| columns.iter().map(|c| m.and_then(|m| m.get(c)).copied()).collect::<Vec<_>>();
        let mut push = |model: &str, method: &str, dist: &str, b: String, per_run: Vec<Vec<Option<Summary>>>| {
            for (run, v) in runs.iter().zip(&per_run) {
                if v.iter().any(Option::is_some) {
                    rows.push((run.label.clone(), model.to_string(), method.to_string(), dist.to_string(), b.clone(), v.clone()));
                }
            }
            for (run, v) in runs.iter().zip(&per_run).skip(1) {
                let delta: Vec<Option<f64>> = v.iter().zip(&per_run[0]).map(|(a, b)| Some(a.as_ref()?.mean - b.as_ref()?.mean)).collect();
                if delta.iter().any(Option::is_some) {
                    differences.push((format!("{} − {}", run.label, runs[0].label), model.to_string(), method.to_string(), dist.to_string(), b.clone(), delta));
                }
            }
        };
        for model in &models {
            push(model, "pre", "—", "—".into(), runs.iter().map(|r| values(r.pre.get(*model))).collect());
        }
        for k in keys {
            push(&k.model, &k.method, &k.distribution, k.batch_size.to_string(), runs.iter().map(|r| values(r.post.get(k))).collect());
        }
        Self { columns, rows, differences, runs: runs.len() }
    }
}

/// Methods in the paper's order.
fn method_rank(method: &str) -> usize {
    ["rome", "memit", "emmet", "alphaedit"].iter().position(|m| *m == method).unwrap_or(4)
}

fn header(m: Metric) -> &'static str {
    match m {
        Metric::RewriteAcc => "Rewrite acc.",
        Metric::ParaphraseAcc => "Paraphrase acc.",
        Metric::NeighborhoodAcc => "Neighborhood acc.",
        other => other.code(),
    }
}

fn method_name(m: &str) -> String {
    match m {
        "rome" => "ROME".into(),
        "memit" => "MEMIT".into(),
        "emmet" => "EMMET".into(),
        "alphaedit" => "AlphaEdit".into(),
        "pre" => "unedited".into(),
        other => other.into(),
    }
}

fn cell(s: &Option<Summary>, pm: &str) -> String {
    match s {
        None => "–".into(),
        Some(Summary { mean, stderr: Some(e), .. }) => format!("{mean:.1}{pm}{e:.1}"),
        Some(Summary { mean, .. }) => format!("{mean:.1}"),
    }
}

fn delta(d: &Option<f64>) -> String {
    d.map(|d| format!("{d:+.1}")).unwrap_or_else(|| "–".into())
}

/// The table in Markdown (also printed to the terminal).
pub fn markdown_table(t: &Table) -> String {
    let run_col = t.runs > 1;
    let mut head: Vec<String> = Vec::new();
    if run_col {
        head.push("Run".into());
    }
    head.extend(["Model", "Method", "Distribution", "B"].map(String::from));
    head.extend(t.columns.iter().map(|&m| header(m).to_string()));
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(head.clone());
    out += &line(head.iter().enumerate().map(|(i, _)| if i < head.len() - t.columns.len() { "---".into() } else { "---:".into() }).collect());
    for (run, model, method, dist, b, values) in &t.rows {
        let mut cells = if run_col { vec![run.clone()] } else { vec![] };
        cells.extend([model.clone(), method_name(method), dist.clone(), b.clone()]);
        cells.extend(values.iter().map(|v| cell(v, " ± ")));
        out += &line(cells);
    }
    if !t.differences.is_empty() {
        out += "\nDifferences of the means to the first run:\n\n";
        out += &line(head.clone());
        out += &line(head.iter().enumerate().map(|(i, _)| if i < head.len() - t.columns.len() { "---".into() } else { "---:".into() }).collect());
        for (run, model, method, dist, b, values) in &t.differences {
            let mut cells = vec![run.clone(), model.clone(), method_name(method), dist.clone(), b.clone()];
            cells.extend(values.iter().map(delta));
            out += &line(cells);
        }
    }
    out
}

/// The table as a LaTeX `tabular` with booktabs rules.
pub fn latex_table(t: &Table) -> String {
    let run_col = t.runs > 1;
    let escape = |s: &str| s.replace('_', "\\_").replace('%', "\\%").replace('&', "\\&");
    let keys = if run_col { 5 } else { 4 };
    let mut out = format!("\\begin{{tabular}}{{{}{}}}\n\\toprule\n", "l".repeat(keys - 1) + "r", "r".repeat(t.columns.len()));
    let mut head: Vec<String> = if run_col { vec!["Run".into()] } else { vec![] };
    head.extend(["Model", "Method", "Dist.", "$B$"].map(String::from));
    head.extend(t.columns.iter().map(|&m| escape(header(m))));
    out += &format!("{} \\\\\n\\midrule\n", head.join(" & "));
    let mut previous_model = None;
    for (run, model, method, dist, b, values) in &t.rows {
        if previous_model.is_some_and(|p| p != model) {
            out += "\\midrule\n";
        }
        previous_model = Some(model);
        let mut cells: Vec<String> = if run_col { vec![escape(run)] } else { vec![] };
        cells.extend([escape(model), method_name(method), escape(dist).replace('—', "--"), b.replace('—', "--")]);
        cells.extend(values.iter().map(|v| cell(v, "$\\pm$")));
        out += &format!("{} \\\\\n", cells.join(" & "));
    }
    if !t.differences.is_empty() {
        out += "\\midrule\n";
        for (run, model, method, dist, b, values) in &t.differences {
            let mut cells = vec![escape(&run.replace('−', "$-$")), escape(model), method_name(method), escape(dist), b.clone()];
            cells.extend(values.iter().map(delta));
            out += &format!("{} \\\\\n", cells.join(" & "));
        }
    }
    out + "\\bottomrule\n\\end{tabular}\n"
}
