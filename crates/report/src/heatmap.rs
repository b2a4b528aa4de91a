//! Heat maps of causal traces, as in ROME's figures: one row per token class (or token), one column
//! per layer, the colour the mean effect of restoring that state, with a colour bar.

use std::path::Path;

use anyhow::{ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::{err, render, Chart, Figure, FONT};

/// A grid of values to draw.
#[derive(Debug, Clone)]
pub struct HeatMap {
    pub title: String,
    /// Label of each row, top to bottom.
    pub rows: Vec<String>,
    /// `values[row][column]`; columns are layers 0, 1, ….
    pub values: Vec<Vec<f64>>,
    /// The colour of the largest value (the smallest is white).
    pub color: (u8, u8, u8),
    pub x_label: String,
    /// What the colour measures (the colour bar's caption).
    pub scale_label: String,
}

impl HeatMap {
    fn range(&self) -> (f64, f64) {
        let values = || self.values.iter().flatten().copied().filter(|v| v.is_finite());
        let low = values().fold(f64::INFINITY, f64::min).min(0.0);
        let high = values().fold(f64::NEG_INFINITY, f64::max);
        (low, if high > low { high } else { low + 1e-9 })
    }

    fn shade(&self, value: f64, (low, high): (f64, f64)) -> RGBColor {
        let f = ((value - low) / (high - low)).clamp(0.0, 1.0);
        let mix = |c: u8| (255.0 - f * (255.0 - c as f64)).round() as u8;
        RGBColor(mix(self.color.0), mix(self.color.1), mix(self.color.2))
    }
}

impl Chart for HeatMap {
    fn title(&self) -> String {
        self.title.clone()
    }

    fn size(&self) -> (u32, u32) {
        (760, 150 + 36 * self.rows.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let columns = self.values.iter().map(Vec::len).max().unwrap_or(0);
        let range = self.range();
        let (map, bar) = area.split_horizontally(area.dim_in_pixel().0 - 110);
        let labels = self.rows.clone();
        let mut chart = ChartBuilder::on(&map)
            .caption(&self.title, (FONT, 18))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(170)
            .build_cartesian_2d(0f64..columns.max(1) as f64, self.rows.len() as f64..0f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(columns.max(1) * 2 + 1)
            .x_label_formatter(&|x: &f64| {
                if (x - x.floor() - 0.5).abs() < 0.01 && (x.floor() as usize).is_multiple_of(5) {
                    format!("{}", x.floor())
                } else {
                    String::new()
                }
            })
            .y_labels(self.rows.len() * 2 + 1)
            .y_label_formatter(&move |y: &f64| {
                let i = y.floor() as usize;
                if (y - y.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .x_desc(&self.x_label)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let cells = self.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                Rectangle::new(
                    [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                    self.shade(v, range).filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(err)?;
        self.draw_bar(&bar, range)
    }
}

impl HeatMap {
    /// The colour bar: the range from bottom to top, labelled at both ends and the middle.
    fn draw_bar<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        (low, high): (f64, f64),
    ) -> Result<()> {
        let mut chart = ChartBuilder::on(area)
            .margin_top(40)
            .margin_bottom(55)
            .margin_right(10)
            .y_label_area_size(55)
            .caption(&self.scale_label, (FONT, 12))
            .build_cartesian_2d(0f64..1f64, low..high)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(3)
            .y_label_formatter(&|v: &f64| format!("{v:.3}"))
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let steps = 50;
        let strip = (0..steps).map(|i| {
            let (a, b) = (
                low + (high - low) * i as f64 / steps as f64,
                low + (high - low) * (i + 1) as f64 / steps as f64,
            );
            Rectangle::new([(0.0, a), (1.0, b)], self.shade((a + b) / 2.0, (low, high)).filled())
        });
        chart.draw_series(strip).map_err(err)?;
        Ok(())
    }
}

/// Writes `map` as `<stem>.png` and `<stem>.svg` under `dir`.
pub fn write_heatmap(map: &HeatMap, dir: &Path, stem: &str) -> Result<Figure> {
    ensure!(
        !map.rows.is_empty() && map.values.len() == map.rows.len(),
        "a heat map needs one row of values per label"
    );
    render(map, dir, stem)
}
