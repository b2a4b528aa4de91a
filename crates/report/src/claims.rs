//! `editbench claims`: the numbers behind the paper's claims, from a batch run's raw rows. Per
//! cell (method × distribution × layers × B × draw) the scores of the edited models; then EMMET −
//! MEMIT (same distribution, layers, B) and spread − single (same method, B) as paired differences
//! over the records both scored: ES, PS, NS as mean ± s.e. of per-record differences, S (the
//! harmonic mean of three means) with a bootstrap s.e. over records, PPL unpaired. Each score
//! family (teacher-forced, generated) gets its own comparisons. Every bootstrap draws from a
//! generator seeded by its own comparison's label, so adding a cell moves no other claim. With
//! several draws of a cell — its seeds in one run, or one run per record draw
//! (`dataset.selection.sample.seed`) — each comparison is also given across draws: mean ± s.e.
//! of the per-draw differences.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use editbench_datasets::rng::SplitMix64;
use editbench_metrics::{mean_stderr, Metric, Stage};
use serde::Serialize;

use crate::load::{raw_lines, read_manifest};

/// A score family: its name and the three scores whose harmonic mean is its S.
pub struct Family {
    pub name: &'static str,
    pub scores: [Metric; 3],
}

/// The families a run may hold; those without rows are left out.
pub const FAMILIES: [Family; 2] = [
    Family { name: "teacher-forced", scores: [Metric::ES, Metric::PS, Metric::NS] },
    Family { name: "generated", scores: [Metric::GenES, Metric::GenPS, Metric::GenNS] },
];

/// What identifies a cell in the claims: every grid axis but the draw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CellKey {
    pub method: String,
    pub distribution: String,
    pub layers: String,
    pub batch_size: usize,
}

/// Per metric, `(case_id, value)` of the edited models (×100 where summaries scale so).
type Values = BTreeMap<Metric, Vec<(u64, f64)>>;

/// A mean with its standard error (`None` with fewer than two values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub se: Option<f64>,
}

impl Estimate {
    fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let (mean, se) = mean_stderr(values);
        Some(Estimate { mean, se })
    }

    fn show(&self, digits: usize) -> String {
        match self.se {
            Some(se) => format!("{:.digits$} ± {se:.digits$}", self.mean),
            None => format!("{:.digits$}", self.mean),
        }
    }
}

/// One paired comparison of two cells on one draw (or across draws).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// e.g. `emmet − memit`.
    pub comparison: String,
    pub family: &'static str,
    /// The axis the comparison is made at (distribution and layers, or method and layers).
    pub at: String,
    pub batch_size: usize,
    /// The draw (seed), or `None` for the row across draws.
    pub draw: Option<u64>,
    /// ΔS, then Δ of each score, ΔPPL.
    pub delta: BTreeMap<String, Estimate>,
    /// Records (or draws, across draws) compared.
    pub n: usize,
    /// The seed of this comparison's bootstrap.
    pub bootstrap_seed: Option<u64>,
}

/// The claims of one run: per cell and draw its scores, and the comparisons.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub run: String,
    pub bootstrap_resamples: usize,
    pub base_seed: u64,
    pub scores: Vec<ScoreRow>,
    pub comparisons: Vec<Comparison>,
}

/// One cell's (or the unedited model's) scores in one family.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreRow {
    pub family: &'static str,
    pub cell: Option<CellKey>,
    pub draw: Option<u64>,
    pub scores: BTreeMap<String, Estimate>,
}

/// FNV-1a of `label`: the comparison's own bootstrap seed (with the run's base seed).
fn label_seed(label: &str, base: u64) -> u64 {
    label
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        ^ base
}

fn harmonic(means: &[f64]) -> f64 {
    if means.iter().any(|&m| m <= 0.0) {
        return 0.0;
    }
    means.len() as f64 / means.iter().map(|m| 1.0 / m).sum::<f64>()
}

/// The values of `metric`, as plain numbers.
fn plain(values: &Values, metric: Metric) -> Vec<f64> {
    values.get(&metric).map(|v| v.iter().map(|(_, x)| *x).collect()).unwrap_or_default()
}

/// A cell's scores in `family`: S from the three means, each score, PPL and DWREL.
fn score_row(values: &Values, family: &Family) -> BTreeMap<String, Estimate> {
    let mut out = BTreeMap::new();
    let means: Vec<Estimate> =
        family.scores.iter().filter_map(|&m| Estimate::of(&plain(values, m))).collect();
    if means.len() == 3 {
        out.insert(
            "S".to_string(),
            Estimate {
                mean: harmonic(&means.iter().map(|e| e.mean).collect::<Vec<_>>()),
                se: None,
            },
        );
    }
    for (&m, e) in family.scores.iter().zip(&means) {
        out.insert(m.code().to_string(), *e);
    }
    for m in [Metric::PPL, Metric::DWREL] {
        if let Some(e) = Estimate::of(&plain(values, m)) {
            out.insert(m.code().to_string(), e);
        }
    }
    out
}

/// `a − b` over the records both scored in every score of `family`; `None` when none.
fn paired(
    a: &Values,
    b: &Values,
    family: &Family,
    resamples: usize,
    seed: u64,
) -> Option<(BTreeMap<String, Estimate>, usize)> {
    let maps: Vec<(BTreeMap<u64, f64>, BTreeMap<u64, f64>)> = family
        .scores
        .iter()
        .map(|m| {
            (
                a.get(m).into_iter().flatten().copied().collect(),
                b.get(m).into_iter().flatten().copied().collect(),
            )
        })
        .collect();
    let cases: Vec<u64> = maps
        .iter()
        .map(|(x, y)| x.keys().filter(|c| y.contains_key(c)).copied().collect::<BTreeSet<u64>>())
        .reduce(|p, q| &p & &q)?
        .into_iter()
        .collect();
    if cases.is_empty() {
        return None;
    }
    let s_of = |sample: &[u64], side: usize| {
        let means: Vec<f64> = maps
            .iter()
            .map(|(x, y)| {
                sample.iter().map(|c| if side == 0 { x[c] } else { y[c] }).sum::<f64>()
                    / sample.len() as f64
            })
            .collect();
        harmonic(&means)
    };
    let mut rng = SplitMix64::new(seed);
    let boots: Vec<f64> = (0..resamples)
        .map(|_| {
            let sample: Vec<u64> = cases
                .iter()
                .map(|_| cases[(rng.next_u64() % cases.len() as u64) as usize])
                .collect();
            s_of(&sample, 0) - s_of(&sample, 1)
        })
        .collect();
    let spread = Estimate::of(&boots).and_then(|e| e.se).map(|se| se * (boots.len() as f64).sqrt());
    let mut delta = BTreeMap::from([(
        "S".to_string(),
        Estimate { mean: s_of(&cases, 0) - s_of(&cases, 1), se: spread },
    )]);
    for (m, (x, y)) in family.scores.iter().zip(&maps) {
        let d: Vec<f64> = cases.iter().map(|c| x[c] - y[c]).collect();
        delta.insert(m.code().to_string(), Estimate::of(&d).expect("records"));
    }
    if let (Some(pa), Some(pb)) =
        (Estimate::of(&plain(a, Metric::PPL)), Estimate::of(&plain(b, Metric::PPL)))
    {
        let se = pa.se.zip(pb.se).map(|(x, y)| (x * x + y * y).sqrt());
        delta.insert("PPL".to_string(), Estimate { mean: pa.mean - pb.mean, se });
    }
    Some((delta, cases.len()))
}

/// The edited models' values per cell and draw, and the unedited model's (one cell's pre rows).
fn values(dir: &Path) -> Result<(BTreeMap<(CellKey, u64), Values>, Values)> {
    let manifest = read_manifest(dir)?;
    let lines = raw_lines(dir, &manifest)?;
    let mut cells: BTreeMap<(CellKey, u64), Values> = BTreeMap::new();
    let mut pre = Values::new();
    let first = lines.iter().find(|l| l.stage == Stage::Pre).map(|l| l.cell_id.clone());
    for l in &lines {
        let Some(metric) = Metric::from_code(&l.metric) else { continue };
        let item = (l.case_id, l.value * metric.scale());
        match l.stage {
            Stage::Pre if Some(&l.cell_id) == first.as_ref() => {
                pre.entry(metric).or_default().push(item)
            }
            Stage::Pre => {}
            Stage::Post => {
                let key = CellKey {
                    method: l.method.clone(),
                    distribution: l.distribution.clone(),
                    layers: l.layers.clone(),
                    batch_size: l.batch_size,
                };
                cells.entry((key, l.seed)).or_default().entry(metric).or_default().push(item);
            }
        }
    }
    if cells.is_empty() {
        bail!("{}: no edited-model rows to make claims from", dir.display());
    }
    Ok((cells, pre))
}

/// The pairs of cells each claim compares: EMMET − MEMIT at equal distribution, layers and B;
/// spread − single at equal method and B (each spread layer choice against the single layer).
fn pairs(keys: &BTreeSet<CellKey>) -> Vec<(String, String, CellKey, CellKey)> {
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.method == "emmet") {
        let memit = CellKey { method: "memit".into(), ..k.clone() };
        if keys.contains(&memit) {
            out.push((
                "emmet − memit".to_string(),
                format!("{} {}", k.distribution, k.layers),
                k.clone(),
                memit,
            ));
        }
    }
    for k in keys.iter().filter(|k| k.distribution == "spread") {
        for single in keys.iter().filter(|s| {
            s.distribution == "single" && s.method == k.method && s.batch_size == k.batch_size
        }) {
            out.push((
                "spread − single".to_string(),
                format!("{} {} vs {}", k.method, k.layers, single.layers),
                k.clone(),
                single.clone(),
            ));
        }
    }
    out
}

/// The record draw of a results directory: its sweep's `dataset.selection.sample.seed`.
fn draw_seed(dir: &Path) -> Result<u64> {
    let manifest = read_manifest(dir)?;
    manifest["sweep"]["dataset"]["selection"]["sample"]["seed"].as_u64().with_context(|| {
        format!(
            "{}: several runs are compared as record draws, but this one's records are not a \
             seeded sample (dataset.selection.sample.seed)",
            dir.display()
        )
    })
}

/// Every run's cells, keyed by their draw: in one run each cell seed is a draw; with several
/// runs, each run is one record draw (`dataset.selection.sample.seed`, all of its cells of one
/// seed). The unedited model's values are the first run's.
fn draws(dirs: &[PathBuf]) -> Result<(BTreeMap<(CellKey, u64), Values>, Values)> {
    let [first, rest @ ..] = dirs else { bail!("no results directory given") };
    let (mut first_cells, pre) = values(first)?;
    if rest.is_empty() {
        return Ok((first_cells, pre));
    }
    let mut all = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let cells = if i == 0 { std::mem::take(&mut first_cells) } else { values(dir)?.0 };
        let draw = draw_seed(dir)?;
        if cells.keys().map(|(_, seed)| seed).collect::<BTreeSet<_>>().len() > 1 {
            bail!("{}: a run compared as one record draw may hold one cell seed", dir.display());
        }
        for ((key, _), v) in cells {
            if all.insert((key, draw), v).is_some() {
                bail!("{}: record draw {draw} is already given by another run", dir.display());
            }
        }
    }
    Ok((all, pre))
}

/// The claims of the runs in `dirs` (one run, or one run per record draw).
pub fn claims(dirs: &[PathBuf], resamples: usize, base_seed: u64) -> Result<Claims> {
    let (cells, pre) = draws(dirs)?;
    let families: Vec<&Family> = FAMILIES
        .iter()
        .filter(|f| cells.values().any(|v| f.scores.iter().all(|m| v.contains_key(m))))
        .collect();
    let mut scores = Vec::new();
    for family in &families {
        scores.push(ScoreRow {
            family: family.name,
            cell: None,
            draw: None,
            scores: score_row(&pre, family),
        });
        for ((key, draw), v) in &cells {
            scores.push(ScoreRow {
                family: family.name,
                cell: Some(key.clone()),
                draw: Some(*draw),
                scores: score_row(v, family),
            });
        }
    }
    let keys: BTreeSet<CellKey> = cells.keys().map(|(k, _)| k.clone()).collect();
    let draws: BTreeSet<u64> = cells.keys().map(|(_, d)| *d).collect();
    let mut comparisons = Vec::new();
    for family in &families {
        for (name, at, a, b) in pairs(&keys) {
            let mut per_draw = Vec::new();
            for &draw in &draws {
                let (Some(x), Some(y)) =
                    (cells.get(&(a.clone(), draw)), cells.get(&(b.clone(), draw)))
                else {
                    continue;
                };
                let label = format!("{name}/{}/{at}/B={}/draw={draw}", family.name, a.batch_size);
                let seed = label_seed(&label, base_seed);
                let Some((delta, n)) = paired(x, y, family, resamples, seed) else { continue };
                per_draw.push(delta.clone());
                comparisons.push(Comparison {
                    comparison: name.clone(),
                    family: family.name,
                    at: at.clone(),
                    batch_size: a.batch_size,
                    draw: Some(draw),
                    delta,
                    n,
                    bootstrap_seed: Some(seed),
                });
            }
            if per_draw.len() > 1 {
                let delta = per_draw[0]
                    .keys()
                    .filter_map(|k| {
                        Some((
                            k.clone(),
                            Estimate::of(
                                &per_draw
                                    .iter()
                                    .filter_map(|d| d.get(k).map(|e| e.mean))
                                    .collect::<Vec<_>>(),
                            )?,
                        ))
                    })
                    .collect();
                comparisons.push(Comparison {
                    comparison: name,
                    family: family.name,
                    at,
                    batch_size: a.batch_size,
                    draw: None,
                    delta,
                    n: per_draw.len(),
                    bootstrap_seed: None,
                });
            }
        }
    }
    Ok(Claims {
        run: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        bootstrap_resamples: resamples,
        base_seed,
        scores,
        comparisons,
    })
}

/// The score columns of a family's tables.
fn columns(family: &str) -> Vec<String> {
    let scores =
        FAMILIES.iter().find(|f| f.name == family).map(|f| f.scores.to_vec()).unwrap_or_default();
    std::iter::once("S".to_string()).chain(scores.iter().map(|m| m.code().to_string())).collect()
}

fn cell(map: &BTreeMap<String, Estimate>, key: &str, digits: usize) -> String {
    map.get(key).map(|e| e.show(digits)).unwrap_or_else(|| "—".into())
}

/// The claims as Markdown.
pub fn markdown(c: &Claims) -> String {
    let mut out = format!("# The paper's claims: numbers from `{}`\n\n", c.run);
    out += &format!(
        "Computed by `editbench claims` from the raw rows. Scores ×100, mean ± s.e. over the scored records; S is the harmonic mean of \
         the three means; PPL over the measured batches; DWREL in % of ‖W₀‖ (mean over layers and batches). Differences are paired \
         over the records both cells scored; ΔS ± bootstrap s.e. ({} resamples, each comparison seeded by its own label and base \
         seed {}); ΔPPL unpaired. \"all\" rows: mean ± s.e. across draws.\n",
        c.bootstrap_resamples, c.base_seed
    );
    let families: BTreeSet<&str> = c.scores.iter().map(|s| s.family).collect();
    for family in families {
        let cols = columns(family);
        out += &format!("\n## Scores, {family}\n\n| method | distribution | layers | B | draw | {} | PPL | DWREL |\n", cols.join(" | "));
        out += &format!("|{}\n", "---|".repeat(cols.len() + 7));
        for s in c.scores.iter().filter(|s| s.family == family) {
            let head = match &s.cell {
                Some(k) => format!(
                    "{} | {} | {} | {} | {}",
                    k.method,
                    k.distribution,
                    k.layers,
                    k.batch_size,
                    s.draw.unwrap_or_default()
                ),
                None => "unedited | — | — | — | —".to_string(),
            };
            let values: Vec<String> = cols.iter().map(|k| cell(&s.scores, k, 1)).collect();
            out += &format!(
                "| {head} | {} | {} | {} |\n",
                values.join(" | "),
                cell(&s.scores, "PPL", 2),
                cell(&s.scores, "DWREL", 2)
            );
        }
        let names: BTreeSet<&str> = c
            .comparisons
            .iter()
            .filter(|x| x.family == family)
            .map(|x| x.comparison.as_str())
            .collect();
        for name in names {
            out += &format!(
                "\n## {name}, {family}\n\n| at | B | draw | {} | ΔPPL | n |\n",
                cols.iter().map(|k| format!("Δ{k}")).collect::<Vec<_>>().join(" | ")
            );
            out += &format!("|{}\n", "---|".repeat(cols.len() + 5));
            for x in c.comparisons.iter().filter(|x| x.family == family && x.comparison == name) {
                let values: Vec<String> = cols.iter().map(|k| cell(&x.delta, k, 1)).collect();
                let draw = x.draw.map_or("all".to_string(), |d| d.to_string());
                out += &format!(
                    "| {} | {} | {draw} | {} | {} | {} |\n",
                    x.at,
                    x.batch_size,
                    values.join(" | "),
                    cell(&x.delta, "PPL", 2),
                    x.n
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(scores: [f64; 3], cases: u64) -> Values {
        let mut v = Values::new();
        for (k, m) in [Metric::ES, Metric::PS, Metric::NS].into_iter().enumerate() {
            v.insert(
                m,
                (0..cases)
                    .map(|c| (c, if c % 2 == 0 { scores[k] } else { 100.0 - scores[k] / 2.0 }))
                    .collect(),
            );
        }
        v
    }

    #[test]
    fn a_cell_compared_with_itself_differs_by_nothing() {
        let a = values([90.0, 80.0, 60.0], 10);
        let (delta, n) = paired(&a, &a, &FAMILIES[0], 100, 1).unwrap();
        assert_eq!(n, 10);
        assert!(delta.values().all(|e| e.mean == 0.0 && e.se.unwrap_or(0.0) == 0.0), "{delta:?}");
    }

    #[test]
    fn paired_differences_use_only_records_scored_in_both_and_bootstraps_are_seeded() {
        let (a, b) = (values([90.0, 80.0, 60.0], 10), values([50.0, 40.0, 60.0], 6));
        let (delta, n) = paired(&a, &b, &FAMILIES[0], 200, 7).unwrap();
        assert_eq!(n, 6);
        // ES: cases alternate 90 − 50 and 55 − 75.
        assert!((delta["ES"].mean - 10.0).abs() < 1e-12, "{delta:?}");
        assert_eq!(paired(&a, &b, &FAMILIES[0], 200, 7).unwrap().0["S"], delta["S"]);
        assert_ne!(paired(&a, &b, &FAMILIES[0], 200, 8).unwrap().0["S"].se, delta["S"].se);
    }

    #[test]
    fn each_comparison_has_its_own_seed() {
        assert_ne!(label_seed("emmet − memit/x/B=1", 0), label_seed("emmet − memit/x/B=16", 0));
        assert_eq!(label_seed("a", 0), label_seed("a", 0));
    }
}
