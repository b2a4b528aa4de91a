//! The paper's table layout: the unedited rows first, then method × distribution × batch size per
//! model (and the layers, where they are an axis); columns ES PS NS S GE RS (+ EM PM NM,
//! accuracies, the generated-answer scores gen_*, perplexity and update norms) that have data,
//! then what the solves reported; one row
//! per run when several runs are compared, followed by the differences to the first run.

use editbench_editing::methods::{display_name, METHODS};
use editbench_metrics::Metric;

use crate::load::{RowKey, Run, SolverNote, Summary};

/// The metric columns in the papers' order.
const ORDER: [Metric; 25] = [
    Metric::ES,
    Metric::PS,
    Metric::NS,
    Metric::S,
    Metric::GE,
    Metric::RS,
    Metric::EM,
    Metric::PM,
    Metric::NM,
    Metric::EA,
    Metric::PA,
    Metric::NA,
    Metric::RewriteAcc,
    Metric::ParaphraseAcc,
    Metric::NeighborhoodAcc,
    Metric::GenES,
    Metric::GenPS,
    Metric::GenNS,
    Metric::GenS,
    Metric::GenESF1,
    Metric::GenPSF1,
    Metric::GenNSF1,
    Metric::PPL,
    Metric::DWREL,
    Metric::DWNORM,
];

/// What identifies a line of the table.
#[derive(Debug, Clone)]
pub struct Label {
    pub run: String,
    pub model: String,
    pub method: String,
    pub distribution: String,
    pub layers: String,
    pub batch: String,
}

/// Cells of the table, ready to format.
pub struct Table {
    pub columns: Vec<Metric>,
    /// Whether the layers are an axis (a column) of the table.
    pub layers: bool,
    /// Whether the solver's condition estimate and pseudo-inverse use are shown.
    pub solver: bool,
    pub rows: Vec<(Label, Vec<Option<Summary>>, Option<SolverNote>)>,
    /// Differences of the means to the first run.
    pub differences: Vec<(Label, Vec<Option<f64>>)>,
    pub runs: usize,
}

impl Table {
    pub fn new(runs: &[Run]) -> Self {
        let has = |m: &Metric| {
            runs.iter().any(|r| r.post.values().chain(r.pre.values()).any(|s| s.contains_key(m)))
        };
        let columns: Vec<Metric> = ORDER.into_iter().filter(has).collect();
        let mut models: Vec<&String> =
            runs.iter().flat_map(|r| r.pre.keys().chain(r.post.keys().map(|k| &k.model))).collect();
        models.sort();
        models.dedup();
        let mut keys: Vec<&RowKey> = runs.iter().flat_map(|r| r.post.keys()).collect();
        keys.sort_by_key(|k| {
            (&k.model, method_rank(&k.method), &k.method, &k.distribution, &k.layers, k.batch_size)
        });
        keys.dedup();
        let mut table = Table {
            layers: keys.iter().any(|k| !k.layers.is_empty()),
            solver: runs.iter().any(|r| !r.solver.is_empty()),
            columns,
            rows: Vec::new(),
            differences: Vec::new(),
            runs: runs.len(),
        };
        let values = |m: Option<&std::collections::BTreeMap<Metric, Summary>>| {
            table.columns.iter().map(|c| m.and_then(|m| m.get(c)).copied()).collect::<Vec<_>>()
        };
        let mut lines: Vec<(Label, Vec<Vec<Option<Summary>>>, Vec<Option<SolverNote>>)> =
            Vec::new();
        for model in &models {
            let label = Label {
                run: String::new(),
                model: model.to_string(),
                method: "pre".into(),
                distribution: "—".into(),
                layers: "—".into(),
                batch: "—".into(),
            };
            lines.push((
                label,
                runs.iter().map(|r| values(r.pre.get(*model))).collect(),
                vec![None; runs.len()],
            ));
        }
        for k in keys {
            let label = Label {
                run: String::new(),
                model: k.model.clone(),
                method: k.method.clone(),
                distribution: k.distribution.clone(),
                layers: k.layers.clone(),
                batch: k.batch_size.to_string(),
            };
            lines.push((
                label,
                runs.iter().map(|r| values(r.post.get(k))).collect(),
                runs.iter().map(|r| r.solver.get(k).copied()).collect(),
            ));
        }
        for (label, per_run, notes) in lines {
            for ((run, v), note) in runs.iter().zip(&per_run).zip(notes) {
                if v.iter().any(Option::is_some) {
                    table.rows.push((
                        Label { run: run.label.clone(), ..label.clone() },
                        v.clone(),
                        note,
                    ));
                }
            }
            for (run, v) in runs.iter().zip(&per_run).skip(1) {
                let delta: Vec<Option<f64>> = v
                    .iter()
                    .zip(&per_run[0])
                    .map(|(a, b)| Some(a.as_ref()?.mean - b.as_ref()?.mean))
                    .collect();
                if delta.iter().any(Option::is_some) {
                    table.differences.push((
                        Label {
                            run: format!("{} − {}", run.label, runs[0].label),
                            ..label.clone()
                        },
                        delta,
                    ));
                }
            }
        }
        table
    }

    pub(crate) fn key_columns(&self, latex: bool) -> Vec<String> {
        let mut head: Vec<String> = if self.runs > 1 { vec!["Run".into()] } else { vec![] };
        head.extend(
            ["Model", "Method", if latex { "Dist." } else { "Distribution" }].map(String::from),
        );
        if self.layers {
            head.push("Layers".into());
        }
        head.push(if latex { "$B$" } else { "B" }.into());
        head
    }

    pub(crate) fn key_cells(&self, l: &Label, run_col: bool) -> Vec<String> {
        let mut cells = if run_col { vec![l.run.clone()] } else { vec![] };
        cells.extend([l.model.clone(), method_name(&l.method), l.distribution.clone()]);
        if self.layers {
            cells.push(l.layers.clone());
        }
        cells.push(l.batch.clone());
        cells
    }

    pub(crate) fn solver_cells(&self, note: &Option<SolverNote>) -> Vec<String> {
        if !self.solver {
            return vec![];
        }
        match note {
            None => vec!["–".into(), "–".into()],
            Some(n) => vec![
                n.max_condition.map(|c| format!("{c:.1e}")).unwrap_or_else(|| "–".into()),
                if n.pseudo_inverse { "yes" } else { "no" }.into(),
            ],
        }
    }
}

/// Methods in the registry's order (the paper's, then the later methods); others after them.
pub(crate) fn method_rank(method: &str) -> usize {
    METHODS.iter().position(|s| s.name == method).unwrap_or(METHODS.len())
}

pub(crate) fn header(m: Metric) -> &'static str {
    match m {
        Metric::RewriteAcc => "Rewrite acc.",
        Metric::ParaphraseAcc => "Paraphrase acc.",
        Metric::NeighborhoodAcc => "Neighborhood acc.",
        other => other.code(),
    }
}

pub(crate) fn method_name(m: &str) -> String {
    match m {
        "pre" => "unedited".into(),
        other => display_name(other).into(),
    }
}

/// `mean ± s.e.`, and `(σ sd over k seeds)` when the row pools several seeds.
pub(crate) fn cell(s: &Option<Summary>, pm: &str, sigma: &str) -> String {
    let Some(s) = s else { return "–".into() };
    let mut text = match s.stderr {
        Some(e) => format!("{:.1}{pm}{e:.1}", s.mean),
        None => format!("{:.1}", s.mean),
    };
    if let Some((sd, k)) = s.seeds {
        text += &format!(" ({sigma} {sd:.1}, {k} seeds)");
    }
    text
}

pub(crate) fn delta(d: &Option<f64>) -> String {
    d.map(|d| format!("{d:+.1}")).unwrap_or_else(|| "–".into())
}

pub(crate) const SOLVER_HEADERS: [&str; 2] = ["cond.", "pinv"];

/// The table in Markdown (also printed to the terminal).
pub fn markdown_table(t: &Table) -> String {
    let run_col = t.runs > 1;
    let keys = t.key_columns(false);
    let mut head = keys.clone();
    head.extend(t.columns.iter().map(|&m| header(m).to_string()));
    if t.solver {
        head.extend(SOLVER_HEADERS.map(String::from));
    }
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let rule = |n: usize| {
        line((0..n).map(|i| if i < keys.len() { "---".into() } else { "---:".into() }).collect())
    };
    let mut out = line(head.clone()) + &rule(head.len());
    for (label, values, note) in &t.rows {
        let mut cells = t.key_cells(label, run_col);
        cells.extend(values.iter().map(|v| cell(v, " ± ", "σ")));
        cells.extend(t.solver_cells(note));
        out += &line(cells);
    }
    if !t.differences.is_empty() {
        let width = keys.len() + t.columns.len();
        out += "\nDifferences of the means to the first run:\n\n";
        out += &line(head[..width].to_vec());
        out += &rule(width);
        for (label, values) in &t.differences {
            let mut cells = t.key_cells(label, true);
            cells.extend(values.iter().map(delta));
            out += &line(cells);
        }
    }
    out
}

/// The table as a LaTeX `tabular` with booktabs rules.
pub fn latex_table(t: &Table) -> String {
    let run_col = t.runs > 1;
    let escape =
        |s: &str| s.replace('_', "\\_").replace('%', "\\%").replace('&', "\\&").replace('—', "--");
    let keys = t.key_columns(true);
    let solver = if t.solver { SOLVER_HEADERS.len() } else { 0 };
    let mut out = format!(
        "\\begin{{tabular}}{{{}{}}}\n\\toprule\n",
        "l".repeat(keys.len() - 1) + "r",
        "r".repeat(t.columns.len() + solver)
    );
    let mut head = keys.clone();
    head.extend(t.columns.iter().map(|&m| escape(header(m))));
    if t.solver {
        head.extend(SOLVER_HEADERS.map(String::from));
    }
    out += &format!("{} \\\\\n\\midrule\n", head.join(" & "));
    let mut previous_model: Option<&String> = None;
    for (label, values, note) in &t.rows {
        if previous_model.is_some_and(|p| *p != label.model) {
            out += "\\midrule\n";
        }
        previous_model = Some(&label.model);
        let mut cells: Vec<String> =
            t.key_cells(label, run_col).iter().map(|c| escape(c)).collect();
        cells.extend(values.iter().map(|v| cell(v, "$\\pm$", "$\\sigma$")));
        cells.extend(t.solver_cells(note));
        out += &format!("{} \\\\\n", cells.join(" & "));
    }
    if !t.differences.is_empty() {
        out += "\\midrule\n";
        for (label, values) in &t.differences {
            let mut cells: Vec<String> =
                t.key_cells(label, true).iter().map(|c| escape(&c.replace('−', "$-$"))).collect();
            cells.extend(values.iter().map(delta));
            cells.extend(std::iter::repeat_n(String::new(), solver));
            out += &format!("{} \\\\\n", cells.join(" & "));
        }
    }
    out + "\\bottomrule\n\\end{tabular}\n"
}
