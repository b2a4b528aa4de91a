//! `report.html` opened in a real browser (headless Chromium; `scripts/test.sh` installs Debian's
//! `chromium` when it is missing): the tables and every figure render, nothing is fetched from
//! the network, no script fails, sorting by a column works and keeps the unedited row on top, and
//! a screenshot is taken.

use std::path::{Path, PathBuf};
use std::process::Command;

use editbench_report::{load_paper, load_run, write_report};

/// Collects script errors, failed resource loads and `console.error` calls from the first moment.
const ERRORS_HOOK: &str = "<script>window.__errors=[];addEventListener('error',function(e){__errors.push(String(e.message||\
(e.target&&e.target.outerHTML)))},true);var __ce=console.error;console.error=function(){__errors.push([].join.call(arguments,' '));\
__ce.apply(console,arguments)};</script>";

/// After the page ran: what rendered, then two clicks on the ES header (ascending, descending), written
/// into `<pre id="check">` as JSON for `--dump-dom`.
const CHECK: &str = "<script>addEventListener('load',function(){
var t=document.getElementById('results'),body=t.tBodies[1];
var svgs=Array.prototype.map.call(document.querySelectorAll('figure svg'),function(s){var r=s.getBoundingClientRect();
return [r.width,r.height,s.querySelectorAll('*').length]});
var imgs=Array.prototype.filter.call(document.images,function(i){return !(i.complete&&i.naturalWidth>0)}).length;
var heads=Array.prototype.map.call(t.tHead.rows[0].cells,function(c){return c.textContent});
var es=heads.indexOf('ES');function column(){return Array.prototype.map.call(body.rows,function(r){
return parseFloat(r.cells[es].getAttribute('data-v'))})}
t.tHead.rows[0].cells[es].click();var sorted=column();t.tHead.rows[0].cells[es].click();var reversed=column();
var out={errors:__errors,tables:document.querySelectorAll('table').length,pinned:t.tBodies[0].rows.length,
rows:body.rows.length,width:t.getBoundingClientRect().width,svgs:svgs,broken_images:imgs,sorted:sorted,reversed:reversed,
first:t.rows[1].cells[1].textContent,aria:t.tHead.rows[0].cells[es].getAttribute('aria-sort')};
var pre=document.createElement('pre');pre.id='check';pre.textContent=JSON.stringify(out);document.body.appendChild(pre)});</script>";

fn chromium() -> PathBuf {
    let candidates = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    std::env::var_os("CHROMIUM").map(PathBuf::from).into_iter().chain(candidates.iter().map(PathBuf::from))
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("no Chromium found (set CHROMIUM or install Debian's `chromium`; scripts/test.sh installs it)")
}

fn headless(page: &Path, args: &[&str]) -> String {
    let url = format!("file://{}", page.display());
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ])
        .args(["--virtual-time-budget=10000"])
        .args(args)
        .arg(&url)
        .output()
        .expect("running Chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn report_page_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-a");
    let paper_csv = dir.path().join("paper.csv");
    std::fs::write(
        &paper_csv,
        "model,method,distribution,batch_size,stage,metric,value\ntiny,emmet,single,1,post,ES,60\n",
    )
    .unwrap();
    let runs = [load_run(&fixture).unwrap(), load_paper(&paper_csv, "paper").unwrap()];
    let out = dir.path().join("report");
    write_report(&runs, &out).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();

    // Self-contained: no external scripts, styles, images or fonts.
    for pattern in ["<script src", "<link", "<img", "url(", "@import"] {
        assert!(!html.contains(pattern), "report.html contains `{pattern}`");
    }
    let without_namespaces = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !without_namespaces.contains("http://") && !without_namespaces.contains("https://"),
        "report.html refers to the network"
    );
    // The manifest, the comparison and links to the CSV files that exist, relative to the page.
    assert!(
        html.contains("<dt>sweep file</dt>") && html.contains("id=\"differences\""),
        "manifest or comparison missing"
    );
    assert!(
        html.contains("href=\"../") && html.contains("timings.csv</a>"),
        "no link to timings.csv"
    );
    assert!(html.contains("cells/*.csv.gz"), "the raw rows are not named");

    let page = out.join("checked.html");
    let instrumented = html.replacen("<head>", &format!("<head>{ERRORS_HOOK}"), 1).replacen(
        "</body>",
        &format!("{CHECK}</body>"),
        1,
    );
    std::fs::write(&page, instrumented).unwrap();
    let dom = headless(&page, &["--dump-dom"]);
    let json = dom
        .split("<pre id=\"check\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .expect("the check script did not run");
    let check: serde_json::Value =
        serde_json::from_str(&json.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
            .unwrap();
    assert_eq!(check["errors"], serde_json::json!([]), "errors in the page: {check}");
    assert_eq!(check["tables"], 2, "{check}");
    assert_eq!(check["pinned"], 1, "one unedited row: {check}");
    assert!(
        check["rows"].as_u64().unwrap() == 3 && check["width"].as_f64().unwrap() > 300.0,
        "{check}"
    );
    let figures = std::fs::read_dir(out.join("figures")).unwrap().count() / 2;
    let svgs = check["svgs"].as_array().unwrap();
    assert_eq!(svgs.len(), figures, "every figure inline: {check}");
    for s in svgs {
        assert!(
            s[0].as_f64().unwrap() > 200.0
                && s[1].as_f64().unwrap() > 150.0
                && s[2].as_u64().unwrap() > 20,
            "empty figure: {check}"
        );
    }
    assert_eq!(check["broken_images"], 0);
    // Sorted by ES, then reversed (ES 50, 60, 100 in the three rows), the unedited row still first.
    assert_eq!(check["sorted"], serde_json::json!([50, 60, 100]), "{check}");
    assert_eq!(check["reversed"], serde_json::json!([100, 60, 50]), "{check}");
    assert_eq!(check["aria"], "descending");
    assert_eq!(check["first"], "tiny", "{check}");

    let shot = dir.path().join("shot.png");
    headless(&out.join("report.html"), &[&format!("--screenshot={}", shot.display())]);
    let bytes = std::fs::read(&shot).expect("no screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 50_000, "screenshot of {} bytes: a blank page?", bytes.len());
}
