//! `report.html`: the report as one self-contained page (no network, no external files needed):
//! each run's manifest, the table with sortable columns (the unedited rows stay on top), the
//! differences between runs, every figure inline as SVG, and links to the CSV files.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

use crate::load::Run;
use crate::plot::Figure;
use crate::table::{cell, delta, header, Table, SOLVER_HEADERS};

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th.key,td.key{text-align:left}th{background:#f3f3f3;cursor:pointer;user-select:none}
tbody.pinned td{background:#fafae8}th[aria-sort=ascending]::after{content:' ▲'}
th[aria-sort=descending]::after{content:' ▼'}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{font-weight:600}dd{margin:0;word-break:break-all}figure{display:inline-block;margin:8px}
figcaption{text-align:center}.scroll{overflow-x:auto}";

/// Sorts the rows of a table's last body by the clicked column (numbers by value, else by text);
/// a second click reverses the order.
const SCRIPT: &str = "document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
var body=t.tBodies[t.tBodies.length-1],rows=Array.prototype.slice.call(body.rows);
var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
t.querySelectorAll('thead th').forEach(function(h){h.removeAttribute('aria-sort')});
th.setAttribute('aria-sort',dir>0?'ascending':'descending');
function v(r){var c=r.cells[i];var d=c.getAttribute('data-v');return d===null?c.textContent:parseFloat(d)}
rows.sort(function(a,b){var x=v(a),y=v(b);if(typeof x==='number'&&typeof y==='number'){
if(isNaN(x))return 1;if(isNaN(y))return -1;return dir*(x-y)}return dir*String(x).localeCompare(String(y))});
rows.forEach(function(r){body.appendChild(r)})})})});";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Markdown's `code` spans as `<code>` elements.
fn code_spans(s: &str) -> String {
    s.split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { format!("<code>{part}</code>") } else { part.to_string() })
        .collect()
}

/// `target` relative to the directory `from` (both made absolute), for links that survive moving
/// the results and the report together.
fn relative(from: &Path, target: &Path) -> PathBuf {
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| std::env::current_dir().unwrap_or_default().join(p))
    };
    let (from, target) = (abs(from), abs(target));
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = target.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel: PathBuf = a[common..].iter().map(|_| "..").collect();
    rel.extend(&b[common..]);
    rel
}

/// A `<dl>` of what the run's manifest records: sweep, hashes, code version, machine.
fn manifest_list(run: &Run) -> String {
    let Some(m) = &run.manifest else { return String::new() };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "–".into(),
        other => other.to_string(),
    };
    let mut items = vec![
        ("sweep file", text(&m["sweep_file"])),
        ("sweep sha256", text(&m["sweep_sha256"])),
        (
            "editbench",
            format!("{} (git {})", text(&m["editbench_version"]), text(&m["git_revision"])),
        ),
        ("backend", text(&m["backend"])),
        (
            "machine",
            m["machine"]
                .as_object()
                .map(|o| {
                    o.iter().map(|(k, v)| format!("{k} {}", text(v))).collect::<Vec<_>>().join(", ")
                })
                .unwrap_or_default(),
        ),
        (
            "dataset",
            format!("{} (sha256 {})", text(&m["dataset"]["path"]), text(&m["dataset"]["sha256"])),
        ),
        ("cells", m["cells"].as_array().map_or(0, Vec::len).to_string()),
    ];
    for model in m["models"].as_array().into_iter().flatten() {
        items.push((
            "model",
            format!(
                "{}: {} (sha256 {})",
                text(&model["name"]),
                text(&model["path"]),
                text(&model["sha256"])
            ),
        ));
    }
    let sets = m["sets"]
        .as_array()
        .map(|s| s.iter().map(text).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    if !sets.is_empty() {
        items.push(("--set", sets));
    }
    let body: String =
        items.iter().map(|(k, v)| format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v))).collect();
    format!("<dl>{body}</dl>\n")
}

/// Links to the run's CSV files that exist, relative to the report's directory.
fn csv_links(run: &Run, out: &Path) -> String {
    let links: Vec<String> = ["summary.csv", "curves.csv", "timings.csv"]
        .iter()
        .map(|f| run.source.join(f))
        .filter(|p| p.is_file())
        .map(|p| {
            let href = relative(out, &p).display().to_string();
            format!(
                "<a href=\"{}\">{}</a>",
                esc(&href),
                esc(&p.file_name().unwrap_or_default().to_string_lossy())
            )
        })
        .collect();
    let rows = if run.from_rows {
        "; raw rows per cell in cells/*.csv.gz (<code>editbench rows</code>)"
    } else {
        " (committed before raw rows were kept)"
    };
    if links.is_empty() {
        String::new()
    } else {
        format!("<p>Data: {}{rows}.</p>\n", links.join(", "))
    }
}

fn th(text: &str, key: bool) -> String {
    format!("<th{} scope=\"col\">{}</th>", if key { " class=\"key\"" } else { "" }, esc(text))
}

fn td(text: &str, key: bool, value: Option<f64>) -> String {
    let v = value.map(|v| format!(" data-v=\"{v}\"")).unwrap_or_default();
    format!("<td{}{v}>{}</td>", if key { " class=\"key\"" } else { "" }, esc(text))
}

/// The table with one row per line of `Table`; the unedited rows in a first, unsorted body.
fn html_table(t: &Table) -> String {
    let run_col = t.runs > 1;
    let keys = t.key_columns(false);
    let mut head: String = keys.iter().map(|k| th(k, true)).collect();
    head.extend(t.columns.iter().map(|&m| th(header(m), false)));
    if t.solver {
        head.extend(SOLVER_HEADERS.iter().map(|h| th(h, false)));
    }
    let (mut pinned, mut rest) = (String::new(), String::new());
    for (label, values, note) in &t.rows {
        let mut row: String =
            t.key_cells(label, run_col).iter().map(|c| td(c, true, None)).collect();
        row.extend(
            values
                .iter()
                .map(|v| td(&cell(v, " ± ", "σ"), false, Some(v.map_or(f64::NAN, |s| s.mean)))),
        );
        let condition = note.and_then(|n| n.max_condition).unwrap_or(f64::NAN);
        let solver = t.solver_cells(note);
        row.extend(solver.iter().zip([Some(condition), None]).map(|(c, v)| td(c, false, v)));
        let body = if label.method == "pre" { &mut pinned } else { &mut rest };
        *body += &format!("<tr>{row}</tr>\n");
    }
    let mut html = format!("<div class=\"scroll\"><table class=\"sortable\" id=\"results\">\n<thead><tr>{head}</tr></thead>\n");
    html += &format!(
        "<tbody class=\"pinned\">\n{pinned}</tbody>\n<tbody>\n{rest}</tbody></table></div>\n"
    );
    if !t.differences.is_empty() {
        let width = keys.len() + t.columns.len();
        let head: String = keys
            .iter()
            .map(|k| th(k, true))
            .chain(t.columns.iter().map(|&m| th(header(m), false)))
            .take(width)
            .collect();
        let rows: String = t
            .differences
            .iter()
            .map(|(label, values)| {
                let keys: String =
                    t.key_cells(label, true).iter().map(|c| td(c, true, None)).collect();
                let cells: String = values
                    .iter()
                    .map(|v| td(&delta(v), false, Some(v.unwrap_or(f64::NAN))))
                    .collect();
                format!("<tr>{keys}{cells}</tr>\n")
            })
            .collect();
        html += "<h3>Differences of the means to the first run</h3>\n";
        html += &format!("<div class=\"scroll\"><table class=\"sortable\" id=\"differences\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody></table></div>\n");
    }
    html
}

/// A figure's SVG, inline, with links to its files.
fn inline_figure(f: &Figure, out: &Path) -> Result<String> {
    let svg =
        std::fs::read_to_string(&f.svg).with_context(|| format!("reading {}", f.svg.display()))?;
    let svg = svg.trim_start_matches(|c: char| c != '<');
    let svg = if svg.starts_with("<?xml") {
        svg.split_once("?>").map_or(svg, |(_, rest)| rest)
    } else {
        svg
    };
    let link = |p: &Path, name: &str| {
        format!("<a href=\"{}\">{name}</a>", esc(&relative(out, p).display().to_string()))
    };
    Ok(format!(
        "<figure>{}<figcaption>{} ({}, {})</figcaption></figure>\n",
        svg.trim(),
        esc(&f.title),
        link(&f.png, "PNG"),
        link(&f.svg, "SVG")
    ))
}

/// Writes `report.html` into `out`; `notes` are the report's explanatory paragraphs (Markdown's
/// code spans allowed).
pub fn write_html(
    runs: &[Run],
    table: &Table,
    figures: &[Figure],
    notes: &[String],
    out: &Path,
) -> Result<PathBuf> {
    let mut html =
        String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    html += &format!(
        "<title>editbench report: {}</title>\n<style>{STYLE}</style></head><body>\n",
        esc(&runs.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join(", "))
    );
    html += "<h1>editbench report</h1>\n";
    for run in runs {
        html += &format!(
            "<h2>Run <code>{}</code></h2>\n<p>From <code>{}</code>.</p>\n",
            esc(&run.label),
            esc(&run.source.display().to_string())
        );
        html += &manifest_list(run);
        html += &csv_links(run, out);
    }
    html += "<h2>Results</h2>\n";
    html += &notes.iter().map(|n| format!("<p>{}</p>\n", code_spans(&esc(n)))).collect::<String>();
    html += "<p>Click a column's header to sort by it; the unedited rows stay on top.</p>\n";
    html += &html_table(table);
    html += "<h2>Figures</h2>\n";
    for f in figures {
        html += &inline_figure(f, out)?;
    }
    html += &format!("<script>{SCRIPT}</script>\n</body></html>\n");
    let path = out.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
