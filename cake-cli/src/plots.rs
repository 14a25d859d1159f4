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
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// The text of a heatmap cell: the score rounded to an integer, `-` where no sample exists.
pub fn cell_label(score: Option<f64>) -> String {
    score.map_or_else(|| "-".to_string(), |s| format!("{s:.0}"))
}

/// Ticks of the heatmap's colour scale.
pub const HEAT_TICKS: [f64; 5] = [0.0, 25.0, 50.0, 75.0, 100.0];

/// Writes `text` on `root` at the backend (absolute) pixel `at`, anchored by `pos`.
fn text_at<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    at: (i32, i32),
    pos: Pos,
    size: u32,
    color: RGBColor,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (xs, ys) = root.get_pixel_range();
    let style = ("sans-serif", size).into_font().color(&color).pos(pos);
    root.draw(&Text::new(
        text.to_string(),
        (at.0 - xs.start, at.1 - ys.start),
        style,
    ))?;
    Ok(())
}

impl Chart for NeedleHeatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (cols, rows) = (self.lengths.len().max(1), self.depths.len().max(1));
        let (width, _) = root.dim_in_pixel();
        let (plot_area, _) = root.split_horizontally(width.saturating_sub(110));
        let mut chart = chart_builder(&plot_area, &self.title, 70)
            .build_cartesian_2d(0f64..cols as f64, 0f64..rows as f64)?;
        // Tick labels are drawn at the cell centres below, not by the mesh.
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc("context length (tokens)")
            .y_desc("answer depth")
            .draw()?;
        let grid: Vec<Vec<(i32, i32)>> = (0..cols)
            .map(|c| {
                (0..rows)
                    .map(|y| chart.backend_coord(&(c as f64 + 0.5, y as f64 + 0.5)))
                    .collect()
            })
            .collect();
        let centre = |c: usize, y: usize| grid[c][y];
        for (r, row) in self.scores.iter().take(rows).enumerate() {
            for (c, score) in row.iter().take(cols).enumerate() {
                let y = rows - 1 - r;
                let color = score.map_or(RGBColor(200, 200, 200), heat);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(c as f64, y as f64), (c as f64 + 1.0, y as f64 + 1.0)],
                    color.filled(),
                )))?;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(c as f64, y as f64), (c as f64 + 1.0, y as f64 + 1.0)],
                    WHITE.stroke_width(1),
                )))?;
                let ink = if score.is_some() { WHITE } else { BLACK };
                let pos = Pos::new(HPos::Center, VPos::Center);
                text_at(root, &cell_label(*score), centre(c, y), pos, 16, ink)?;
            }
        }
        // Column labels under each column's centre, row labels left of each row's centre.
        let bottom = chart.backend_coord(&(0.0, 0.0)).1;
        for (c, length) in self.lengths.iter().enumerate() {
            let at = (centre(c, 0).0, bottom + 6);
            let pos = Pos::new(HPos::Center, VPos::Top);
            text_at(root, &length.to_string(), at, pos, 14, BLACK)?;
        }
        let left = chart.backend_coord(&(0.0, 0.0)).0;
        for (r, depth) in self.depths.iter().enumerate() {
            let at = (left - 6, centre(0, rows - 1 - r).1);
            let pos = Pos::new(HPos::Right, VPos::Center);
            text_at(root, &format!("{depth:.0}%"), at, pos, 14, BLACK)?;
        }
        // Colour scale: a vertical bar from 0 (bottom) to 100 (top), with ticks.
        let top = chart.backend_coord(&(0.0, rows as f64)).1;
        let x0 = width as i32 - 95;
        let (w, h) = (18, (bottom - top).max(1));
        let (xs, ys) = root.get_pixel_range();
        let rel = |x: i32, y: i32| (x - xs.start, y - ys.start);
        for k in 0..h {
            let color = heat(100.0 * f64::from(k) / f64::from(h));
            let y = bottom - k;
            root.draw(&Rectangle::new(
                [rel(x0, y - 1), rel(x0 + w, y)],
                color.filled(),
            ))?;
        }
        root.draw(&Rectangle::new(
            [rel(x0, top), rel(x0 + w, bottom)],
            BLACK.stroke_width(1),
        ))?;
        for tick in HEAT_TICKS {
            let y = bottom - (tick / 100.0 * f64::from(h)).round() as i32;
            root.draw(&PathElement::new(
                vec![rel(x0 + w, y), rel(x0 + w + 5, y)],
                BLACK.stroke_width(1),
            ))?;
            let pos = Pos::new(HPos::Left, VPos::Center);
            text_at(root, &format!("{tick:.0}"), (x0 + w + 8, y), pos, 12, BLACK)?;
        }
        let pos = Pos::new(HPos::Left, VPos::Bottom);
        text_at(root, "score", (x0 - 4, top - 8), pos, 13, BLACK)?;
        Ok(())
    }
}

/// One row of a [`KeptTokens`] chart: the prompt positions a layer's KV head kept.
pub struct KeptRow {
    /// Row label, e.g. `L3 h1`.
    pub label: String,
    /// Kept positions, ascending.
    pub kept: Vec<usize>,
    /// Annotation at the row's end, e.g. the layer's budget.
    pub note: String,
}

/// Which prompt positions each layer (and KV head) kept, one row each, layer 0 at the
/// top; kept tokens shaded, the needle's token span marked by a band between two lines.
pub struct KeptTokens {
    /// Chart title.
    pub title: String,
    /// Positions on the x axis: the prompt length, or more when decoded tokens are kept.
    pub positions: usize,
    /// The rows, top first.
    pub rows: Vec<KeptRow>,
    /// The needle's token positions and its label (named in the chart).
    pub needle: Option<(std::ops::Range<usize>, String)>,
}

/// Maximal runs `[start, end)` of consecutive values in an ascending list.
fn runs(sorted: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &p in sorted {
        match out.last_mut() {
            Some((_, end)) if *end == p => *end = p + 1,
            _ => out.push((p, p + 1)),
        }
    }
    out
}

impl Chart for KeptTokens {
    fn size(&self) -> (u32, u32) {
        (1200, (140 + 16 * self.rows.len() as u32).max(320))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let n = self.rows.len().max(1);
        let x_max = self.positions.max(1) as f64;
        // A strip above the title holds the needle's label, over its band.
        let (header, body) = root.split_vertically(24);
        let mut chart = chart_builder(&body, &self.title, 60)
            .margin_right(190)
            .build_cartesian_2d(0f64..x_max, 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(0)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("prompt position (token)")
            .draw()?;
        let red = RGBColor(200, 30, 30);
        if let Some((span, _)) = &self.needle {
            let (a, b) = (span.start as f64, span.end as f64);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b, n as f64)],
                red.mix(0.15).filled(),
            )))?;
        }
        let blue = RGBColor(40, 90, 170);
        for (i, row) in self.rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            chart.draw_series(runs(&row.kept).into_iter().map(|(s, e)| {
                Rectangle::new([(s as f64, y + 0.15), (e as f64, y + 0.85)], blue.filled())
            }))?;
            let (left, mid) = chart.backend_coord(&(0.0, y + 0.5));
            let pos = Pos::new(HPos::Right, VPos::Center);
            text_at(root, &row.label, (left - 6, mid), pos, 11, BLACK)?;
            let right = chart.backend_coord(&(x_max, y + 0.5)).0;
            let pos = Pos::new(HPos::Left, VPos::Center);
            text_at(root, &row.note, (right + 6, mid), pos, 11, BLACK)?;
        }
        if let Some((span, label)) = &self.needle {
            for x in [span.start as f64, span.end as f64] {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, n as f64)],
                    red.stroke_width(1),
                )))?;
            }
            let x = chart.backend_coord(&(span.start as f64, 0.0)).0;
            let (_, ys) = header.get_pixel_range();
            let pos = Pos::new(HPos::Left, VPos::Center);
            let (width, _) = root.dim_in_pixel();
            let x = x
                .min(width as i32 - 8 * label.chars().count() as i32)
                .max(4);
            text_at(&header, label, (x, (ys.start + ys.end) / 2), pos, 12, red)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SVG's text elements: each one's attributes and its content, trimmed (they carry
    /// newlines around them).
    fn text_elements(svg: &str) -> Vec<(&str, &str)> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (attributes, rest) = t.split_once('>')?;
                Some((attributes, rest.split('<').next()?.trim()))
            })
            .collect()
    }

    /// The contents of an SVG's text elements.
    fn texts_of(svg: &str) -> Vec<&str> {
        text_elements(svg)
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    }

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
        let texts = texts_of(&svg);
        for c in ["64", "128", "256"] {
            assert!(texts.contains(&c), "x tick {c} missing: {texts:?}");
        }

        let heat = NeedleHeatmap {
            title: "needle".into(),
            lengths: vec![1024, 2048],
            depths: vec![0.0, 50.0, 100.0],
            scores: vec![
                vec![Some(100.0), Some(0.0)],
                vec![Some(66.7), None],
                vec![Some(33.3), Some(12.0)],
            ],
        };
        let files = render(&heat, &dir.path().join("heat")).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        let texts = texts_of(&svg);
        // Every length and depth labels its column or row, as a text element of its own.
        for label in ["1024", "2048", "0%", "50%", "100%"] {
            assert!(texts.contains(&label), "label {label} missing: {texts:?}");
        }
        // Every cell prints its score.
        for row in &heat.scores {
            for score in row {
                let label = cell_label(*score);
                assert!(texts.contains(&label.as_str()), "cell {label}: {texts:?}");
            }
        }
        assert!(texts.contains(&"67") && texts.contains(&"-"), "{texts:?}");
        // The colour scale's ticks.
        for tick in ["0", "25", "50", "75", "100", "score"] {
            assert!(
                texts.contains(&tick),
                "scale tick {tick} missing: {texts:?}"
            );
        }
        // Column labels sit at the cell centres: under the scores of their column.
        let x_of = |label: &str| -> f64 {
            text_elements(&svg)
                .into_iter()
                .find(|&(_, text)| text == label)
                .and_then(|(a, _)| a.split("x=\"").nth(1)?.split('"').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no x for {label}"))
        };
        assert_eq!(x_of("1024"), x_of("33"));
        assert_eq!(x_of("2048"), x_of("12"));
        assert!(x_of("2048") > x_of("1024") + 100.0);

        let kept = KeptTokens {
            title: "kept".into(),
            positions: 40,
            rows: vec![
                KeptRow {
                    label: "L0 h0".into(),
                    kept: vec![0, 1, 2, 10, 11, 30],
                    note: "budget 4".into(),
                },
                KeptRow {
                    label: "L1 h0".into(),
                    kept: vec![5],
                    note: "budget 9".into(),
                },
            ],
            needle: Some((10..12, "needle \"key 42\" (tokens 10..12)".into())),
        };
        let files = render(&kept, &dir.path().join("kept")).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        let texts = texts_of(&svg);
        for label in ["L0 h0", "L1 h0", "budget 4", "budget 9"] {
            assert!(texts.contains(&label), "{label} missing: {texts:?}");
        }
        assert!(texts.iter().any(|t| t.starts_with("needle")), "{texts:?}");
        assert_eq!(
            runs(&[0, 1, 2, 10, 11, 30]),
            vec![(0, 3), (10, 12), (30, 31)]
        );
    }
}
