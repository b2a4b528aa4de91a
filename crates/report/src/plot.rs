//! The report's figures, each drawn once through plotters onto a PNG and an SVG backend, with text
//! in the bundled DejaVu Sans (no system fonts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use editbench_editing::methods::METHODS;
use editbench_metrics::Metric;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::element::ErrorBar;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::load::{RowKey, Run, Summary};
use crate::table::method_rank;

pub(crate) const FONT: &str = "sans-serif";
/// Figure size in pixels: readable at a paper's column width once scaled to about 8 cm.
const PANEL: (u32, u32) = (560, 420);

/// A written figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        )
        .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType file"));
    });
}

/// Something drawn on any plotters backend.
pub(crate) trait Chart {
    fn title(&self) -> String;
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

pub(crate) fn render(chart: &impl Chart, dir: &Path, stem: &str) -> Result<Figure> {
    register_font();
    std::fs::create_dir_all(dir)?;
    let (png, svg) = (dir.join(format!("{stem}.png")), dir.join(format!("{stem}.svg")));
    let size = chart.size();
    {
        let area = BitMapBackend::new(&png, size).into_drawing_area();
        area.fill(&WHITE).map_err(err)?;
        chart.draw(&area)?;
        area.present().map_err(err)?;
    }
    {
        let area = SVGBackend::new(&svg, size).into_drawing_area();
        area.fill(&WHITE).map_err(err)?;
        chart.draw(&area)?;
        area.present().map_err(err)?;
    }
    Ok(Figure { title: chart.title(), png, svg })
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

fn method_color(method: &str) -> RGBColor {
    let spec = METHODS.iter().find(|s| s.name == method);
    spec.map_or(RGBColor(90, 90, 90), |s| RGBColor(s.colour.0, s.colour.1, s.colour.2))
}

const PHASE_COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

fn models(runs: &[Run]) -> Vec<String> {
    runs.iter()
        .flat_map(|r| r.post.keys().map(|k| k.model.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// (a) One metric against the batch size (log axis, ticks at the batch sizes run), a line per
/// run × method × distribution (× layers) with standard-error bars, one panel per model: colour and
/// marker per method, dashed for spread, lines that coincide offset a little sideways; the
/// unedited model as a grey horizontal line. Against the edited layer instead where the layer is
/// an axis of the run (a line per run × method × batch size).
struct MetricVs<'a> {
    runs: &'a [Run],
    metric: Metric,
    axis: XAxis,
}

/// The x axis of [`MetricVs`].
#[derive(Clone, Copy, PartialEq)]
enum XAxis {
    /// Batch size, log₂ scale.
    Batch,
    /// The one edited layer of single-layer cells.
    Layer,
}

impl XAxis {
    fn position(self, x: usize) -> f64 {
        match self {
            XAxis::Batch => (x as f64).log2(),
            XAxis::Layer => x as f64,
        }
    }
    fn tick_label(self, position: f64) -> String {
        match self {
            XAxis::Batch => format!("{:.0}", position.exp2()),
            XAxis::Layer => format!("{position:.0}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            XAxis::Batch => "batch size",
            XAxis::Layer => "edited layer",
        }
    }
    fn description(self) -> &'static str {
        match self {
            XAxis::Batch => "batch size (edits per batch, log scale)",
            XAxis::Layer => "edited layer",
        }
    }
}

/// Sideways offset between lines in x units (log₂ B, layers), so coinciding lines stay visible.
const DODGE: f64 = 0.07;

impl Chart for MetricVs<'_> {
    fn title(&self) -> String {
        format!("{} vs {}", self.metric.code(), self.axis.name())
    }
    fn size(&self) -> (u32, u32) {
        (PANEL.0 * models(self.runs).len().max(1) as u32, PANEL.1)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let models = models(self.runs);
        for (panel, model) in area.split_evenly((1, models.len().max(1))).iter().zip(&models) {
            let lines = series(self.runs, model, self.metric, self.axis);
            let unedited = self
                .runs
                .iter()
                .find_map(|r| r.pre.get(model).and_then(|m| m.get(&self.metric)))
                .map(|s| s.mean);
            let sizes: BTreeSet<usize> =
                lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).collect();
            let ticks: Vec<f64> = sizes.iter().map(|&b| self.axis.position(b)).collect();
            let min_x = ticks.first().copied().unwrap_or(0.0).min(0.0);
            let max_x = ticks.last().copied().unwrap_or(1.0).max(1.0);
            let values = lines
                .iter()
                .flat_map(|l| {
                    l.points
                        .iter()
                        .flat_map(|p| [p.1 - p.2.unwrap_or(0.0), p.1 + p.2.unwrap_or(0.0)])
                })
                .chain(unedited);
            let y_axis = YAxis::new(self.metric, values);
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{model}: {}{}", self.metric.code(), sample_note(self.runs)),
                    (FONT, 18),
                )
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(
                    TickedAxis { range: min_x - 0.6..max_x + 0.6, ticks },
                    y_axis.clone(),
                )
                .map_err(err)?;
            let axis = self.axis;
            chart
                .configure_mesh()
                .x_label_formatter(&|x: &f64| axis.tick_label(*x))
                .y_label_formatter(&|y: &f64| y_axis.label(*y))
                .x_desc(self.axis.description())
                .y_desc(y_axis.description(self.metric))
                .label_style((FONT, 13))
                .draw()
                .map_err(err)?;
            if let Some(y) = unedited {
                unedited_line(&mut chart, min_x - 0.6..max_x + 0.6, y_axis.at(y))?;
            }
            let n = lines.len() as f64;
            for (i, line) in lines.iter().enumerate() {
                let offset = (i as f64 - (n - 1.0) / 2.0) * DODGE;
                let points: Vec<(f64, f64, Option<f64>)> = line
                    .points
                    .iter()
                    .map(|p| (self.axis.position(p.0) + offset, p.1, p.2))
                    .collect();
                draw_line(
                    &mut chart,
                    &y_axis,
                    &line.method,
                    &line.distribution,
                    line.label.clone(),
                    2,
                    &points,
                )?;
            }
            // Rising perplexities and norms leave the upper left free; falling scores the lower left.
            let corner = if y_axis.log {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::LowerLeft
            };
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 12))
                .position(corner)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Perplexities and update norms that span more than this factor are drawn on a log₁₀ axis.
const LOG_SPAN: f64 = 30.0;

/// The y axis of line figures: linear, or log₁₀ where a perplexity or update norm spans more than
/// [`LOG_SPAN`]× (a batch that breaks the model takes perplexity from ~16 to ~10⁶, which flattens
/// every other point on a linear axis). Values are drawn at [`YAxis::at`]; a log axis has a tick
/// per decade.
#[derive(Clone)]
struct YAxis {
    /// In drawn units: values, or their log₁₀.
    range: std::ops::Range<f64>,
    log: bool,
}

impl YAxis {
    fn new(metric: Metric, values: impl Iterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        let positive = values.iter().copied().filter(|&v| v > 0.0);
        let (low, high) =
            positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let wide = unbounded(metric) && high > low * LOG_SPAN;
        match wide {
            true => YAxis { range: low.log10().floor()..high.log10().ceil(), log: true },
            false => YAxis { range: y_range(metric, values.into_iter()), log: false },
        }
    }

    /// Where `value` is drawn (on a log axis: its log₁₀, clamped to the axis' bottom).
    fn at(&self, value: f64) -> f64 {
        match self.log {
            true => value.max(10f64.powf(self.range.start)).log10(),
            false => value,
        }
    }

    fn label(&self, y: f64) -> String {
        match self.log {
            true if y.abs() >= 4.0 => format!("1e{y:.0}"),
            true => format!("{}", 10f64.powi(y.round() as i32)),
            false => format!("{y:.4}").trim_end_matches('0').trim_end_matches('.').to_string(),
        }
    }

    fn description(&self, metric: Metric) -> String {
        axis_label(metric) + if self.log { " (log scale)" } else { "" }
    }
}

impl Ranged for YAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match self.log {
            true => (self.range.start as i32..=self.range.end as i32).map(f64::from).collect(),
            false => RangedCoordf64::from(self.range.clone()).key_points(hint),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// A linear axis (here log₂ of the batch size) whose ticks are exactly the given values.
struct TickedAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (fraction * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// The unedited model's value as a grey dashed horizontal line over `x`.
fn unedited_line<DB: DrawingBackend, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, YAxis>>,
    x: std::ops::Range<f64>,
    y: f64,
) -> Result<()> {
    let grey = RGBColor(120, 120, 120).stroke_width(1);
    chart
        .draw_series(DashedLineSeries::new(vec![(x.start, y), (x.end, y)], 3, 4, grey))
        .map_err(err)?
        .label("unedited")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
    Ok(())
}

/// One line of `points` `(x, mean, standard error)`: colour and marker per method, dashed for
/// spread, `width` pixels wide, standard-error bars, and its legend entry.
#[allow(clippy::too_many_arguments)]
fn draw_line<DB: DrawingBackend, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, YAxis>>,
    y_axis: &YAxis,
    method: &str,
    distribution: &str,
    label: String,
    width: u32,
    points: &[(f64, f64, Option<f64>)],
) -> Result<()> {
    let drawn: Vec<(f64, f64)> = points.iter().map(|p| (p.0, y_axis.at(p.1))).collect();
    let color = method_color(method);
    let style = color.stroke_width(width);
    if distribution == "spread" {
        chart
            .draw_series(DashedLineSeries::new(drawn.clone(), 8, 5, style))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], style));
    } else {
        chart
            .draw_series(LineSeries::new(drawn.clone(), style))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    let bars = points.iter().filter_map(|&(x, mean, se)| {
        se.map(|e| {
            ErrorBar::new_vertical(
                x,
                y_axis.at(mean - e),
                y_axis.at(mean),
                y_axis.at(mean + e),
                color.stroke_width(1),
                6,
            )
        })
    });
    chart.draw_series(bars).map_err(err)?;
    markers(chart, &drawn, method_rank(method), color)
}

/// One marker shape per method, so lines of several methods that coincide stay apart.
fn markers<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'_, DB, CT>,
    points: &[(f64, f64)],
    shape: usize,
    color: RGBColor,
) -> Result<()> {
    match shape % 4 {
        0 => {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map(|_| ())
        }
        1 => chart
            .draw_series(points.iter().map(|&p| TriangleMarker::new(p, 6, color.filled())))
            .map(|_| ()),
        2 => chart
            .draw_series(points.iter().map(|&p| Cross::new(p, 5, color.stroke_width(2))))
            .map(|_| ()),
        _ => {
            chart
                .draw_series(points.iter().map(|&p| {
                    EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], color.filled())
                }))
                .map(|_| ())
        }
    }
    .map_err(err)
}

/// ` (scores: a sample of n of N records)` when the runs scored a sample.
fn sample_note(runs: &[Run]) -> String {
    runs.iter()
        .find_map(|r| r.sample)
        .map(|(n, total)| format!(" (scores: {n} of {total} records)"))
        .unwrap_or_default()
}

fn axis_label(metric: Metric) -> String {
    match metric {
        Metric::PPL => "perplexity".into(),
        Metric::DWNORM => "‖ΔW‖ (Frobenius)".into(),
        Metric::DWREL => "‖ΔW‖ / ‖W‖ (%)".into(),
        m => format!("{} (%)", m.code()),
    }
}

/// Perplexity and update norms: no natural range, they rise as edits wear the model down (scores
/// fall within theirs).
fn unbounded(metric: Metric) -> bool {
    matches!(metric, Metric::PPL | Metric::DWNORM | Metric::DWREL)
}

/// The y range: the metric's natural one for scores, from the data for perplexity and norms.
fn y_range(metric: Metric, values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    match metric {
        Metric::EM | Metric::PM | Metric::NM => -100.0..100.0,
        Metric::GE => 0.0..800.0,
        m if unbounded(m) => 0.0..values.fold(1e-9, f64::max) * 1.15,
        _ => 0.0..105.0,
    }
}

/// A line of [`MetricVs`]: its points `(x, mean, standard error)`.
struct Line {
    label: String,
    method: String,
    distribution: String,
    points: Vec<(usize, f64, Option<f64>)>,
}

/// Per run × method × distribution × layers (against the batch size) or × batch size (against
/// the layer, single-layer rows only) of `model`, its points.
fn series(runs: &[Run], model: &str, metric: Metric, axis: XAxis) -> Vec<Line> {
    let mut out: BTreeMap<(usize, String, String, String), Line> = BTreeMap::new();
    for (r, run) in runs.iter().enumerate() {
        for (key, values) in run.post.iter().filter(|(k, _)| k.model == model) {
            let Some(s) = values.get(&metric) else { continue };
            let (x, other) = match axis {
                XAxis::Batch => (key.batch_size, key.layers.clone()),
                XAxis::Layer => match key.layers.parse::<usize>() {
                    Ok(layer) => (layer, format!("B={}", key.batch_size)),
                    Err(_) => continue,
                },
            };
            let mut label =
                format!("{} {}", crate::table::method_name(&key.method), key.distribution);
            if !other.is_empty() {
                label += &format!(" {other}");
            }
            if runs.len() > 1 {
                label = format!("{} {label}", run.label);
            }
            let line = out
                .entry((r, key.method.clone(), key.distribution.clone(), other))
                .or_insert_with(|| Line {
                    label,
                    method: key.method.clone(),
                    distribution: key.distribution.clone(),
                    points: Vec::new(),
                });
            line.points.push((x, s.mean, s.stderr));
        }
    }
    out.into_values()
        .map(|mut line| {
            line.points.sort_by_key(|p| p.0);
            line
        })
        .collect()
}

/// (b) The methods side by side: bars of one metric per batch size, one panel per distribution.
struct MethodsSideBySide<'a> {
    runs: &'a [Run],
    metric: Metric,
}

impl Chart for MethodsSideBySide<'_> {
    fn title(&self) -> String {
        format!("Methods side by side ({})", self.metric.code())
    }
    fn size(&self) -> (u32, u32) {
        (PANEL.0 * self.panels().len().max(1) as u32, PANEL.1)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let panels = self.panels();
        for (panel, (model, dist)) in
            area.split_evenly((1, panels.len().max(1))).iter().zip(&panels)
        {
            let bars: BTreeMap<(usize, String), f64> = self.runs[0]
                .post
                .iter()
                .filter(|(k, _)| &k.model == model && &k.distribution == dist)
                .filter_map(|(k, v)| {
                    v.get(&self.metric).map(|s| ((k.batch_size, k.method.clone()), s.mean))
                })
                .collect();
            let sizes: Vec<usize> =
                bars.keys().map(|k| k.0).collect::<BTreeSet<_>>().into_iter().collect();
            let methods: Vec<String> =
                bars.keys().map(|k| k.1.clone()).collect::<BTreeSet<_>>().into_iter().collect();
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{model}, {dist}: {}", self.metric.code()), (FONT, 20))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(
                    0f64..sizes.len().max(1) as f64,
                    y_range(self.metric, bars.values().copied()),
                )
                .map_err(err)?;
            let labels = sizes.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(sizes.len().max(1) * 2 + 1)
                .x_label_formatter(&move |x: &f64| {
                    let i = x.floor() as usize;
                    if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                        format!("B={}", labels[i])
                    } else {
                        String::new()
                    }
                })
                .x_desc("batch size")
                .y_desc(axis_label(self.metric))
                .label_style((FONT, 13))
                .draw()
                .map_err(err)?;
            let width = 0.8 / methods.len().max(1) as f64;
            for (j, method) in methods.iter().enumerate() {
                let color = method_color(method);
                let rects: Vec<Rectangle<(f64, f64)>> = sizes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| {
                        let v = *bars.get(&(*b, method.clone()))?;
                        let x0 = i as f64 + 0.1 + j as f64 * width;
                        Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], color.filled()))
                    })
                    .collect();
                chart.draw_series(rects).map_err(err)?.label(method.to_uppercase()).legend(
                    move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()),
                );
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 12))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

impl MethodsSideBySide<'_> {
    fn panels(&self) -> Vec<(String, String)> {
        self.runs[0]
            .post
            .keys()
            .map(|k| (k.model.clone(), k.distribution.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// (c) Sequential editing: a metric against the number of edits applied, a line per cell (styled as
/// in [`MetricVs`], with standard-error bars and the unedited model's value).
struct SequentialCurve<'a> {
    run: &'a Run,
    metric: Metric,
}

impl Chart for SequentialCurve<'_> {
    fn title(&self) -> String {
        format!("Sequential editing ({}, {})", self.metric.code(), self.run.label)
    }
    fn size(&self) -> (u32, u32) {
        PANEL
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let max_edits =
            self.run.curves.values().flat_map(|c| c.keys()).copied().max().unwrap_or(1) as f64;
        let points =
            |curve: &BTreeMap<usize, BTreeMap<Metric, Summary>>| -> Vec<(f64, f64, Option<f64>)> {
                curve
                    .iter()
                    .filter_map(|(n, m)| m.get(&self.metric).map(|s| (*n as f64, s.mean, s.stderr)))
                    .collect()
            };
        let lines: Vec<(&RowKey, Vec<(f64, f64, Option<f64>)>)> =
            self.run.curves.iter().map(|(key, curve)| (key, points(curve))).collect();
        // The unedited model's value (one model per sequential run).
        let unedited = self.run.pre.values().find_map(|m| m.get(&self.metric)).map(|s| s.mean);
        let values = lines
            .iter()
            .flat_map(|(_, l)| {
                l.iter().flat_map(|p| [p.1 - p.2.unwrap_or(0.0), p.1 + p.2.unwrap_or(0.0)])
            })
            .chain(unedited);
        let y_axis = YAxis::new(self.metric, values);
        let x_range = 0f64..max_edits * 1.02;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: {}{}",
                    self.run.label,
                    self.metric.code(),
                    sample_note(std::slice::from_ref(self.run))
                ),
                (FONT, 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x_range.clone(), y_axis.clone())
            .map_err(err)?;
        let y_desc = match unbounded(self.metric) {
            true => y_axis.description(self.metric),
            false => format!("{} on the edits so far", y_axis.description(self.metric)),
        };
        chart
            .configure_mesh()
            .x_desc("edits applied")
            .y_desc(y_desc)
            .x_label_formatter(&|x: &f64| format!("{x:.0}"))
            .y_label_formatter(&|y: &f64| y_axis.label(*y))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        if let Some(y) = unedited {
            unedited_line(&mut chart, x_range, y_axis.at(y))?;
        }
        // Lines of one method and distribution at several batch sizes: wider for larger B (else 2).
        let mut sizes: Vec<usize> = lines.iter().map(|(k, _)| k.batch_size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for (key, points) in &lines {
            let layers =
                if key.layers.is_empty() { String::new() } else { format!(" {}", key.layers) };
            let label = format!(
                "{} {} B={}{layers}",
                crate::table::method_name(&key.method),
                key.distribution,
                key.batch_size
            );
            let rank = sizes.iter().position(|&b| b == key.batch_size).unwrap_or(0).min(2) as u32;
            let width = if sizes.len() == 1 { 2 } else { 1 + 2 * rank };
            draw_line(&mut chart, &y_axis, &key.method, &key.distribution, label, width, points)?;
        }
        // Rising perplexities and norms leave the upper left free; falling scores the lower left.
        let corner = if unbounded(self.metric) {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::LowerLeft
        };
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .position(corner)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// (d) Seconds per phase per cell, stacked horizontal bars.
struct Timings<'a> {
    run: &'a Run,
}

impl Chart for Timings<'_> {
    fn title(&self) -> String {
        format!("Time per phase ({})", self.run.label)
    }
    fn size(&self) -> (u32, u32) {
        (PANEL.0 + 200, 120 + 28 * self.cells().len() as u32)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let cells = self.cells();
        let phases: Vec<String> = self
            .run
            .timings
            .iter()
            .map(|t| t.1.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let total =
            |c: &str| self.run.timings.iter().filter(|t| t.0 == c).map(|t| t.2).sum::<f64>();
        let max = cells.iter().map(|c| total(c)).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title(), (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(200)
            .build_cartesian_2d(0f64..max * 1.05, 0f64..cells.len() as f64)
            .map_err(err)?;
        let names = cells.clone();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(cells.len() * 2 + 1)
            .y_label_formatter(&move |y: &f64| {
                let i = y.floor() as usize;
                if (y - y.floor() - 0.5).abs() < 0.01 && i < names.len() {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .x_desc("seconds")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (p, phase) in phases.iter().enumerate() {
            let color = PHASE_COLORS[p % PHASE_COLORS.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let before: f64 = self
                        .run
                        .timings
                        .iter()
                        .filter(|t| &t.0 == c && phases[..p].contains(&t.1))
                        .map(|t| t.2)
                        .sum();
                    let own: f64 = self
                        .run
                        .timings
                        .iter()
                        .filter(|t| &t.0 == c && &t.1 == phase)
                        .map(|t| t.2)
                        .sum();
                    Rectangle::new(
                        [(before, i as f64 + 0.15), (before + own, i as f64 + 0.85)],
                        color.filled(),
                    )
                })
                .collect();
            chart.draw_series(rects).map_err(err)?.label(phase.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

impl Timings<'_> {
    fn cells(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for t in &self.run.timings {
            if !seen.contains(&t.0) {
                seen.push(t.0.clone());
            }
        }
        seen
    }
}

/// Every figure that the data supports, as PNG and SVG in `dir`.
pub fn plot_all(runs: &[Run], dir: &Path) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let present = |m: Metric| runs.iter().any(|r| r.post.values().any(|v| v.contains_key(&m)));
    let headline: Vec<Metric> = [
        Metric::ES,
        Metric::PS,
        Metric::NS,
        Metric::S,
        Metric::GE,
        Metric::RewriteAcc,
        Metric::ParaphraseAcc,
        Metric::NeighborhoodAcc,
        Metric::GenES,
        Metric::GenPS,
        Metric::GenNS,
        Metric::GenS,
        Metric::PPL,
        Metric::DWREL,
    ]
    .into_iter()
    .filter(|&m| present(m))
    .collect();
    for &metric in &headline {
        figures.push(render(
            &MetricVs { runs, metric, axis: XAxis::Batch },
            dir,
            &format!("batch-size-{}", metric.code()),
        )?);
    }
    // A layer sweep: each metric against the edited layer.
    let layered = runs
        .iter()
        .flat_map(|r| r.post.keys())
        .filter(|k| k.layers.parse::<usize>().is_ok())
        .map(|k| &k.layers)
        .collect::<BTreeSet<_>>();
    for &metric in headline.iter().filter(|_| layered.len() > 1) {
        figures.push(render(
            &MetricVs { runs, metric, axis: XAxis::Layer },
            dir,
            &format!("layer-{}", metric.code()),
        )?);
    }
    if let Some(&metric) = headline.iter().find(|&&m| m == Metric::S).or(headline.first()) {
        figures.push(render(
            &MethodsSideBySide { runs, metric },
            dir,
            &format!("methods-{}", metric.code()),
        )?);
    }
    for run in runs.iter().filter(|r| !r.curves.is_empty()) {
        for metric in [
            Metric::ES,
            Metric::PS,
            Metric::NS,
            Metric::GenES,
            Metric::GenPS,
            Metric::GenNS,
            Metric::PPL,
            Metric::DWREL,
        ]
        .into_iter()
        .filter(|&m| present(m))
        {
            figures.push(render(
                &SequentialCurve { run, metric },
                dir,
                &format!("sequential-{}-{}", run.label, metric.code()),
            )?);
        }
    }
    for run in runs.iter().filter(|r| !r.timings.is_empty()) {
        figures.push(render(&Timings { run }, dir, &format!("timings-{}", run.label))?);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A perplexity that explodes past [`LOG_SPAN`]× is drawn on decades; scores and a narrow
    /// perplexity range stay linear.
    #[test]
    fn y_axis_turns_logarithmic_only_for_wide_perplexities_and_norms() {
        let ppl = YAxis::new(Metric::PPL, [16.54, 25.4, 1496.4, 633_636.9].into_iter());
        assert!(ppl.log);
        assert_eq!(ppl.range, 1.0..6.0);
        assert!((ppl.at(16.54) - 16.54f64.log10()).abs() < 1e-12);
        assert_eq!(ppl.at(-3.0), 1.0, "a lower error bar below the axis is clamped to its bottom");
        assert_eq!(ppl.key_points(4), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            [ppl.label(-1.0), ppl.label(2.0), ppl.label(6.0)],
            ["0.1", "100", "1e6"].map(String::from)
        );
        let narrow = YAxis::new(Metric::PPL, [16.5, 31.8].into_iter());
        assert!(!narrow.log);
        assert_eq!(narrow.at(31.8), 31.8);
        let scores = YAxis::new(Metric::ES, [0.5, 100.0].into_iter());
        assert!(!scores.log);
        assert_eq!(scores.range, 0.0..105.0);
    }
}
