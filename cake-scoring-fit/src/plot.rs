//! Charts drawn with `plotters` as SVG or PNG (by file extension): the shared setup (font,
//! backends, house style of titles, axes, legends and lines) that the `cake` command's
//! charts use too, and the measured-vs-fitted plot of a score-function fit.
//!
//! The workspace builds plotters with its `ab_glyph` text renderer, which draws no text
//! until a font is registered: [`ensure_font`] registers the TTF file named by the
//! `CAKE_PLOT_FONT` environment variable, else the first of [`FONT_CANDIDATES`] that exists.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::collect::{LayerStatsRow, normalised_layer};
use crate::cv::check_target;
use crate::error::{FitError, Result};
use crate::poly::Poly;

/// TTF files tried, in order, for the charts' text (after `CAKE_PLOT_FONT`).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font as plotters' "sans-serif" once (later calls return the first
/// outcome); the error says what was tried and how to fix it.
pub fn ensure_font() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let from_env = std::env::var("CAKE_PLOT_FONT").ok();
            let candidates: Vec<&str> = from_env
                .iter()
                .map(String::as_str)
                .chain(FONT_CANDIDATES.iter().copied())
                .collect();
            for path in &candidates {
                let Ok(bytes) = std::fs::read(path) else {
                    continue;
                };
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
                {
                    return Ok(());
                }
            }
            Err(format!(
                "no usable TTF font for the chart text (tried {}); set CAKE_PLOT_FONT to a .ttf file",
                candidates.join(", ")
            ))
        })
        .clone()
}

/// What drawing a chart returns: plotters' errors (and a chart's own) boxed.
pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A chart that can draw itself on any plotters backend.
pub trait Chart {
    /// Pixel size of the chart.
    fn size(&self) -> (u32, u32) {
        (900, 540)
    }

    /// Draws the chart on `root`, which [`render_file`] has filled white.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draws `chart` into `path`, an SVG or PNG file by its extension (`.svg` or `.png`),
/// after registering the font ([`ensure_font`]).
pub fn render_file(chart: &impl Chart, path: &Path) -> Result<()> {
    let failed = |message: String| FitError::Plot {
        path: path.to_path_buf(),
        message,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let drawn = match ext.as_deref() {
        Some("svg") => {
            ensure_font().map_err(failed)?;
            draw_on(
                chart,
                SVGBackend::new(path, chart.size()).into_drawing_area(),
            )
        }
        Some("png") => {
            ensure_font().map_err(failed)?;
            draw_on(
                chart,
                BitMapBackend::new(path, chart.size()).into_drawing_area(),
            )
        }
        _ => return Err(failed("unsupported extension; use .svg or .png".into())),
    };
    drawn.map_err(|e| failed(e.to_string()))
}

fn draw_on<DB: DrawingBackend>(chart: &impl Chart, root: DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    chart.draw(&root)?;
    root.present()?;
    Ok(())
}

/// A chart builder in the house style: the title in 22 px sans-serif, a 12 px margin,
/// 40 px under the plot for the x labels and `y_label_area` px left of it for the y labels.
pub fn chart_builder<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area);
    builder
}

/// Draws the series' legend in a framed, translucent white box at `position`.
pub fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()?;
    Ok(())
}

/// Draws `points` as a line of `color` (2 px) with a dot at each point, listed in the
/// legend as `name`.
pub fn draw_line<DB>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    color: RGBColor,
    name: &str,
    points: Vec<(f64, f64)>,
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, color.filled())),
    )?;
    Ok(())
}

/// Draws every sample's measured share per layer (light dots), the per-layer mean (blue
/// line with dots) and the fitted polynomial (red curve) against the layer index.
/// `rows` must be one fit target (see [`crate::rows_for_head`]). The format follows the
/// extension of `path`: `.svg` or `.png`.
pub fn plot_fit(rows: &[LayerStatsRow], fit: &Poly, path: &Path) -> Result<()> {
    check_target(rows)?;
    render_file(&FitChart { rows, fit }, path)
}

/// Measured vs fitted layer shares.
struct FitChart<'a> {
    rows: &'a [LayerStatsRow],
    fit: &'a Poly,
}

impl Chart for FitChart<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (rows, fit) = (self.rows, self.fit);
        let num_layers = rows[0].num_layers;
        let last = (num_layers.max(2) - 1) as f64;
        let mut per_layer: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
        for r in rows {
            let entry = per_layer.entry(r.layer).or_insert((0.0, 0));
            entry.0 += r.share;
            entry.1 += 1;
        }
        let means: Vec<(f64, f64)> = per_layer
            .iter()
            .map(|(&l, &(s, n))| (l as f64, s / n as f64))
            .collect();
        let curve: Vec<(f64, f64)> = (0..=400)
            .map(|i| {
                let x = i as f64 / 400.0;
                (x * last, fit.eval(x))
            })
            .collect();
        let ys = rows
            .iter()
            .map(|r| r.share)
            .chain(curve.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        let pad = ((hi - lo) * 0.05).max(1e-6);

        let mut chart = chart_builder(root, "Layer preference share: measured vs fitted", 70)
            .build_cartesian_2d(-0.5..last + 0.5, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("layer")
            .y_desc("share of preference")
            .draw()?;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(rows.iter().map(|r| {
                let layer = normalised_layer(r.layer, num_layers) * last;
                Circle::new((layer, r.share), 2, grey.mix(0.4).filled())
            }))?
            .label("measured (each sample)")
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, grey.filled()));
        draw_line(&mut chart, BLUE, "measured (mean per layer)", means)?;
        chart
            .draw_series(LineSeries::new(curve, RED.stroke_width(2)))?
            .label(format!("fitted polynomial (degree {})", fit.degree()))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}
