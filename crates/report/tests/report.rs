//! The report on a small hand-made results directory: aggregation against hand-computed means,
//! Markdown/LaTeX snapshots, figures that are valid PNG/SVG files, comparisons and bad input.

use std::path::{Path, PathBuf};

use editbench_metrics::Metric;
use editbench_report::{
    latex_table, load_paper, load_run, markdown_table, write_report, RowKey, Table,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-a")
}

fn key(b: usize) -> RowKey {
    RowKey {
        model: "tiny".into(),
        method: "emmet".into(),
        distribution: "single".into(),
        layers: String::new(),
        batch_size: b,
    }
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

#[test]
fn aggregation_matches_hand_computed_means() {
    let run = load_run(&fixture()).unwrap();
    // B = 1, sequential: the final round's rows are case 1 (ES 1, PS 1, NS .5) and case 2 (0, .5, 1).
    let b1 = &run.post[&key(1)];
    close(b1[&Metric::ES].mean, 50.0);
    close(b1[&Metric::ES].stderr.unwrap(), 50.0);
    close(b1[&Metric::PS].mean, 75.0);
    close(b1[&Metric::NS].stderr.unwrap(), 25.0);
    close(b1[&Metric::S].mean, 3.0 / (1.0 / 50.0 + 2.0 / 75.0));
    // B = 2: cases (1, 1, 1) and (1, 0, .5).
    let b2 = &run.post[&key(2)];
    close(b2[&Metric::ES].mean, 100.0);
    close(b2[&Metric::PS].mean, 50.0);
    close(b2[&Metric::S].mean, 3.0 / (1.0 / 100.0 + 1.0 / 50.0 + 1.0 / 75.0));
    // The unknown metric code `XX` is skipped.
    assert_eq!(b2.len(), 4);
    // Unedited: ES 0, PS .25, NS 1 (and S 0, since ES is 0).
    let pre = &run.pre["tiny"];
    close(pre[&Metric::PS].mean, 25.0);
    close(pre[&Metric::S].mean, 0.0);
    // Sequential curve of B = 1: after 1 edit case 1 only, after 2 edits both cases.
    let curve = &run.curves[&key(1)];
    close(curve[&1][&Metric::ES].mean, 100.0);
    close(curve[&2][&Metric::PS].mean, 75.0);
    close(curve[&2][&Metric::PS].stderr.unwrap(), 25.0);
    assert_eq!(run.timings.len(), 5);
}

#[test]
fn markdown_and_latex_snapshots() {
    let run = load_run(&fixture()).unwrap();
    let table = Table::new(&[run]);
    let expected = |name: &str| std::fs::read_to_string(fixture().join("..").join(name)).unwrap();
    assert_eq!(markdown_table(&table), expected("expected-table.md"));
    assert_eq!(latex_table(&table), expected("expected-table.tex"));
}

#[test]
fn report_writes_tables_figures_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let run = load_run(&fixture()).unwrap();
    let paper_csv = dir.path().join("paper.csv");
    std::fs::write(&paper_csv, "model,method,distribution,batch_size,stage,metric,value\ntiny,emmet,single,1,post,ES,60\ntiny,emmet,single,1,pre,ES,0\n").unwrap();
    let paper = load_paper(&paper_csv, "paper").unwrap();
    let markdown = write_report(&[run, paper], dir.path()).unwrap();
    assert!(
        markdown.contains("| paper − run-a | tiny | EMMET | single | 1 | +10.0 |"),
        "{markdown}"
    );
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let figures: Vec<_> = std::fs::read_dir(dir.path().join("figures"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    // ES, PS, NS, S vs batch size; methods side by side; 3 sequential curves; timings: 9 × 2 files.
    assert_eq!(figures.len(), 18, "{figures:?}");
    for f in &figures {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            (5_000..2_000_000).contains(&bytes.len()),
            "{}: {} bytes",
            f.display(),
            bytes.len()
        );
        match f.extension().and_then(|e| e.to_str()) {
            Some("png") => assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display()),
            Some("svg") => {
                let text = String::from_utf8(bytes).unwrap();
                assert!(
                    text.contains("<svg") && text.trim_end().ends_with("</svg>"),
                    "{}",
                    f.display()
                );
            }
            other => panic!("unexpected file {other:?}"),
        }
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(report.contains(&format!("figures/{name}")), "report.md does not link {name}");
    }
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_run(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a results directory (manifest.json is missing)"), "{err}");
    let bad = dir.path().join("paper.csv");
    std::fs::write(
        &bad,
        "model,method,distribution,batch_size,stage,metric,value\ntiny,emmet,single,1,post,QQ,60\n",
    )
    .unwrap();
    let err = load_paper(&bad, "p").unwrap_err().to_string();
    assert!(err.contains("line 2: unknown metric code `QQ`"), "{err}");
    // Raw rows that are header only are an error, not an empty table.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    write_run(&empty, "independent", &[]);
    let err = load_run(&empty).unwrap_err().to_string();
    assert!(
        err.contains("not a results directory (summary.csv is missing, and no cell has raw rows)"),
        "{err}"
    );
    std::fs::write(&bad, "model,method\ntiny,emmet\n").unwrap();
    let err = format!("{:#}", load_paper(&bad, "p").unwrap_err());
    assert!(err.contains("paper.csv: line 2"), "{err}");
}

/// A results directory written by hand: `rows` are `cell,layers,seed,round,case,stage,metric,value`;
/// each cell's raw rows in cells/<id>.csv.gz.
fn write_run(dir: &Path, protocol: &str, rows: &[&str]) {
    let header = "cell_id,model,method,distribution,layers,batch_size,n_edits,seed,round,case_id,stage,metric,value\n";
    let mut cells: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    for r in rows {
        let f: Vec<&str> = r.split(',').collect();
        let csv = cells.entry(f[0]).or_insert_with(|| header.to_string());
        *csv += &format!(
            "{},tiny,emmet,single,{},1,4,{},{},{},{},{},{}\n",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
        );
    }
    let ids: Vec<String> = cells.keys().map(|c| format!(r#"{{"id": "{c}"}}"#)).collect();
    let manifest = format!(
        r#"{{"sweep": {{"protocol": "{protocol}", "dataset": {{"n_edits": 4}}, "eval": {{"sample": {{"n": 2}}}}}}, "cells": [{}]}}"#,
        ids.join(", ")
    );
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    std::fs::create_dir_all(dir.join("cells")).unwrap();
    for (id, csv) in &cells {
        std::fs::write(
            editbench_report::rows::cell_rows_path(dir, id),
            editbench_report::rows::gzip(csv.as_bytes()).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("timings.csv"), "cell_id,phase,seconds\n").unwrap();
}

/// Cells that differ in their layers are separate rows (a Layers column); cells that differ only
/// in their seed are one row with the spread across seeds; in the independent protocol every
/// batch's rows count (PPL of two batches is their mean); the layers get figures of their own.
#[test]
fn layers_are_rows_seeds_are_pooled_and_every_batch_counts() {
    let dir = tempfile::tempdir().unwrap();
    write_run(
        dir.path(),
        "independent",
        &[
            "a,2,0,1,1,post,ES,1",
            "a,2,0,2,2,post,ES,0",
            "b,4,0,1,1,post,ES,1",
            "b,4,0,2,2,post,ES,1",
            "b,4,0,1,0,post,PPL,10",
            "b,4,0,2,0,post,PPL,20",
            "c,4,1,1,1,post,ES,0",
            "c,4,1,2,2,post,ES,1",
            "c,4,1,1,0,post,PPL,30",
        ],
    );
    let run = load_run(dir.path()).unwrap();
    let at = |layers: &str| {
        &run.post[&RowKey {
            model: "tiny".into(),
            method: "emmet".into(),
            distribution: "single".into(),
            layers: layers.into(),
            batch_size: 1,
        }]
    };
    close(at("2")[&Metric::ES].mean, 50.0);
    assert_eq!(at("2")[&Metric::ES].seeds, None);
    // Layer 4: seed 0 has ES 100, seed 1 has 50 → mean 75, σ of the two means 35.36.
    let es = at("4")[&Metric::ES];
    close(es.mean, 75.0);
    let (sd, k) = es.seeds.unwrap();
    close(sd, 50.0 / 2f64.sqrt());
    assert_eq!(k, 2);
    // PPL: seed 0 measured after two batches (mean 15), seed 1 after one (30); not scaled by 100.
    close(at("4")[&Metric::PPL].mean, 22.5);
    let markdown = markdown_table(&Table::new(&[run]));
    assert!(markdown.contains("| Model | Method | Distribution | Layers | B | ES |"), "{markdown}");
    assert!(
        markdown.contains("| tiny | EMMET | single | 4 | 1 | 75.0 ± 25.0 (σ 35.4, 2 seeds) |"),
        "{markdown}"
    );
    let report = write_report(&[load_run(dir.path()).unwrap()], dir.path()).unwrap();
    assert!(report.contains("| 2 | 1 |"));
    assert!(std::fs::read_to_string(dir.path().join("report.md"))
        .unwrap()
        .contains("a sample of 2 of the 4 records"));
    // The layer is an axis: each metric also against the layer (ES and PPL here).
    for stem in ["layer-ES", "layer-PPL"] {
        assert!(
            dir.path().join("figures").join(format!("{stem}.svg")).is_file(),
            "no {stem} figure"
        );
    }
}

/// A batch run of an EMMET and a MEMIT cell (B = 1) on the record draw `draw`: `rows` are
/// `method,case,metric,value` of the edited models.
fn write_draw(dir: &Path, draw: u64, rows: &[&str]) {
    let header = "cell_id,model,method,distribution,layers,batch_size,n_edits,seed,round,case_id,stage,metric,value\n";
    let mut cells: std::collections::BTreeMap<String, String> = Default::default();
    for r in rows {
        let f: Vec<&str> = r.split(',').collect();
        let csv = cells.entry(f[0].to_string()).or_insert_with(|| header.to_string());
        *csv += &format!(
            "{},tiny,{},single,4,1,2,0,{},{},post,{},{}\n",
            f[0], f[0], f[1], f[1], f[2], f[3]
        );
    }
    let ids: Vec<String> = cells.keys().map(|c| format!(r#"{{"id": "{c}"}}"#)).collect();
    let manifest = format!(
        r#"{{"sweep": {{"protocol": "independent", "dataset": {{"n_edits": 2, "selection": {{"sample": {{"n": 2, "seed": {draw}}}}}}}}}, "cells": [{}]}}"#,
        ids.join(", ")
    );
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    std::fs::create_dir_all(dir.join("cells")).unwrap();
    for (id, csv) in &cells {
        let path = editbench_report::rows::cell_rows_path(dir, id);
        std::fs::write(path, editbench_report::rows::gzip(csv.as_bytes()).unwrap()).unwrap();
    }
}

/// Runs of the same sweep on different record draws are compared draw by draw, and across draws
/// (mean ± s.e. of the per-draw differences); two runs of one draw are refused.
#[test]
fn claims_across_record_draws_given_as_separate_runs() {
    let dirs: Vec<PathBuf> = (0..3).map(|_| tempfile::tempdir().unwrap().keep()).collect();
    // EMMET − MEMIT ΔES: draw 0: (1 − 0 + 1 − 1) / 2 = 0.5 → 50; draw 1: 0; draw 2: 100.
    let rows = |emmet: [u8; 2], memit: [u8; 2]| -> Vec<String> {
        let mut out = Vec::new();
        for (method, es) in [("emmet", emmet), ("memit", memit)] {
            for (case, v) in es.iter().enumerate() {
                for metric in ["ES", "PS", "NS"] {
                    out.push(format!("{method},{case},{metric},{v}"));
                }
            }
        }
        out
    };
    for (i, (e, m)) in [([1, 1], [0, 1]), ([1, 0], [1, 0]), ([1, 1], [0, 0])].iter().enumerate() {
        let r = rows(*e, *m);
        write_draw(&dirs[i], [0, 7, 3][i], &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let claims = editbench_report::claims::claims(&dirs, 50, 0).unwrap();
    let es = |draw: Option<u64>| {
        claims
            .comparisons
            .iter()
            .find(|c| c.comparison == "emmet − memit" && c.draw == draw)
            .map(|c| c.delta["ES"])
            .unwrap()
    };
    close(es(Some(0)).mean, 50.0);
    close(es(Some(7)).mean, 0.0);
    close(es(Some(3)).mean, 100.0);
    let across = es(None);
    close(across.mean, 50.0);
    close(across.se.unwrap(), 50.0 / 3f64.sqrt());
    let twice = [dirs[0].clone(), dirs[0].clone()];
    let err = editbench_report::claims::claims(&twice, 50, 0).unwrap_err().to_string();
    assert!(err.contains("record draw 0 is already given"), "{err}");
    for dir in dirs {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
