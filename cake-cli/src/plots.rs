//! Charts users plot from results, as SVG and PNG, in the house style of
//! `cake_scoring_fit::plot` (which also registers the font). Text is laid out with a
//! TrueType font (`CAKE_PLOT_FONT`, else DejaVu Sans or Liberation Sans); without one,
//! charts are skipped with a warning rather than failing the command whose results they
//! illustrate.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cake_scoring_fit::plot::{
    Chart, DrawResult, chart_builder, draw_legend, draw_line, ensure_font, render_file,
};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Draws `chart` into `<stem>.svg` and `<stem>.png`; returns the files written (none, with
/// a warning, when no font is installed).
pub fn render(chart: &impl Chart, stem: &Path) -> Result<Vec<PathBuf>> {
    if let Err(why) = ensure_font() {
        eprintln!("warning: {why}; skipped the chart {}", stem.display());
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    for ext in ["svg", "png"] {
        let path = stem.with_extension(ext);
        render_file(chart, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// Colour of series `i`.
fn series_color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// Draws one line per `(name, points)` series in the palette's colours, then the legend.
fn draw_lines<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    series: impl IntoIterator<Item = (String, Vec<(f64, f64)>)>,
    legend: SeriesLabelPosition,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    for (i, (name, points)) in series.into_iter().enumerate() {
        draw_line(chart, series_color(i), &name, points)?;
    }
    draw_legend(chart, legend)
}

/// Average score against cache size, one line per policy (x: cache sizes, evenly spaced).
pub struct ScoreVsCacheSize {
    /// Chart title.
    pub title: String,
    /// Cache sizes C on the x axis, ascending.
    pub cache_sizes: Vec<usize>,
    /// (policy, score per cache size; `None` where not run).
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Per series (same order), the (low, high) interval at each cache size, drawn as an
    /// error bar; `None` (or a missing entry) draws none.
    pub intervals: Vec<Vec<Option<(f64, f64)>>>,
    /// The full-cache score, drawn as a dashed horizontal line.
    pub full: Option<f64>,
    /// The full-cache score's (low, high) interval, drawn as a grey band.
    pub full_interval: Option<(f64, f64)>,
}

impl Chart for ScoreVsCacheSize {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let n = self.cache_sizes.len().max(1);
        let values = self.series.iter().flat_map(|(_, v)| v.iter().flatten());
        let highs = self
            .intervals
            .iter()
            .flat_map(|v| v.iter().flatten().map(|(_, high)| high))
            .chain(self.full_interval.iter().map(|(_, high)| high));
        let top = values
            .chain(self.full.iter())
            .chain(highs)
            .fold(1.0f64, |a, &b| a.max(b))
            * 1.1;
        let mut chart = chart_builder(root, &self.title, 50)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)?;
        let sizes = self.cache_sizes.clone();
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    sizes
                        .get(i as usize)
                        .map_or(String::new(), |c| c.to_string())
                } else {
                    String::new()
                }
            })
            .x_desc("cache size C (tokens per layer)")
            .y_desc("average score")
            .draw()?;
        if let Some((low, high)) = self.full_interval {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(-0.5, low), (n as f64 - 0.5, high)],
                BLACK.mix(0.08).filled(),
            )))?;
        }
        if let Some(full) = self.full {
            let style = BLACK.mix(0.6).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    [(-0.5, full), (n as f64 - 0.5, full)],
                    6,
                    4,
                    style,
                ))?
                .label(format!("full cache ({full:.2})"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        }
        // Error bars first, in the series' colours, so the lines and markers stay on top.
        for (i, ((_, scores), bars)) in self.series.iter().zip(&self.intervals).enumerate() {
            let color = series_color(i);
            chart.draw_series(scores.iter().zip(bars).enumerate().filter_map(
                |(x, (score, bar))| {
                    let (score, (low, high)) = (score.as_ref()?, bar.as_ref()?);
                    Some(ErrorBar::new_vertical(
                        x as f64,
                        *low,
                        *score,
                        *high,
                        color.stroke_width(1),
                        8,
                    ))
                },
            ))?;
        }
        let series = self.series.iter().map(|(name, scores)| {
            let points = scores
                .iter()
                .enumerate()
                .filter_map(|(x, s)| s.map(|s| (x as f64, s)))
                .collect();
            (name.clone(), points)
        });
        draw_lines(&mut chart, series, SeriesLabelPosition::LowerRight)
    }
}

/// Per-layer budgets of one run as bars.
pub struct LayerBudgets {
    /// Chart title.
    pub title: String,
    /// Tokens kept per layer (window included), layer 0 first.
    pub kept: Vec<usize>,
}

impl Chart for LayerBudgets {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let top = self.kept.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
        let mut chart = chart_builder(root, &self.title, 60)
            .build_cartesian_2d(0usize..self.kept.len(), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("tokens kept")
            .draw()?;
        chart.draw_series(self.kept.iter().enumerate().map(|(layer, &k)| {
            Rectangle::new(
                [(layer, 0.0), (layer + 1, k as f64)],
                series_color(0).mix(0.8).filled(),
            )
        }))?;
        Ok(())
    }
}

/// Decode latency per token against context length, one line per configuration.
pub struct LatencyVsContext {
    /// Chart title.
    pub title: String,
    /// Context lengths on the x axis, ascending.
    pub contexts: Vec<usize>,
    /// (configuration, milliseconds per decoded token at each context).
    pub series: Vec<(String, Vec<f64>)>,
}

impl Chart for LatencyVsContext {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let x_max = self.contexts.iter().copied().max().unwrap_or(1) as f64 * 1.05;
        let y_max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1e-3f64, f64::max)
            * 1.15;
        let mut chart =
            chart_builder(root, &self.title, 60).build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("context length (tokens)")
            .y_desc("decode latency (ms / token)")
            .draw()?;
        let series = self.series.iter().map(|(name, ms)| {
            let points = self.contexts.iter().zip(ms).map(|(&c, &m)| (c as f64, m));
            (name.clone(), points.collect())
        });
        draw_lines(&mut chart, series, SeriesLabelPosition::UpperLeft)
    }
}

/// Needle-retrieval score (0..100) over answer depth x context length.
pub struct NeedleHeatmap {
    /// Chart title.
    pub title: String,
    /// Context lengths (columns).
    pub lengths: Vec<usize>,
    /// Answer depths in percent of the context (rows, top = 0%).
    pub depths: Vec<f64>,
    /// `scores[depth][length]`, `None` where no sample exists.
    pub scores: Vec<Vec<Option<f64>>>,
}

/// Red (0) to green (100) colour scale.
fn heat(score: f64) -> RGBColor {
    let t = (score / 100.0).clamp(0.0, 1.0);
    RGBColor(
        (220.0 * (1.0 - t) + 30.0 * t) as u8,
        (60.0 * (1.0 - t) + 170.0 * t) as u8,
        (60.0 * (1.0 - t) + 80.0 * t) as u8,
    )
}

impl Chart for NeedleHeatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (cols, rows) = (self.lengths.len(), self.depths.len());
        let lengths = self.lengths.clone();
        let depths = self.depths.clone();
        let mut chart = chart_builder(root, &self.title, 60)
            .build_cartesian_2d(0..cols.max(1), 0..rows.max(1))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols.max(1))
            .y_labels(rows.max(1))
            .x_label_formatter(&|&i| lengths.get(i).map_or(String::new(), |l| l.to_string()))
            .y_label_formatter(&|&i| {
                rows.checked_sub(i + 1)
                    .and_then(|r| depths.get(r))
                    .map_or(String::new(), |d| format!("{d:.0}%"))
            })
            .x_desc("context length (tokens)")
            .y_desc("answer depth")
            .draw()?;
        for (r, row) in self.scores.iter().enumerate() {
            for (c, score) in row.iter().enumerate() {
                let y = rows - 1 - r;
                let color = score.map_or(RGBColor(200, 200, 200), heat);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(c, y), (c + 1, y + 1)],
                    color.filled(),
                )))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_write_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let chart = ScoreVsCacheSize {
            title: "synthetic suite".into(),
            cache_sizes: vec![64, 128, 256],
            series: vec![("cake".into(), vec![Some(40.0), None, Some(80.0)])],
            intervals: vec![vec![Some((30.0, 50.0)), None, Some((70.0, 88.0))]],
            full: Some(90.0),
            full_interval: Some((85.0, 95.0)),
        };
        let files = render(&chart, &dir.path().join("score")).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("cake") && svg.contains("full cache (90.00)"));
        // Every cache size labels the x axis, as a text element of its own.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .and_then(|(_, rest)| rest.split('<').next())
            })
            .map(str::trim)
            .collect();
        for c in ["64", "128", "256"] {
            assert!(texts.contains(&c), "x tick {c} missing: {texts:?}");
        }

        let heat = NeedleHeatmap {
            title: "needle".into(),
            lengths: vec![1024, 2048],
            depths: vec![0.0, 50.0, 100.0],
            scores: vec![vec![Some(100.0), Some(0.0)]; 3],
        };
        let files = render(&heat, &dir.path().join("heat")).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("50%") && svg.contains("2048"));
    }
}
