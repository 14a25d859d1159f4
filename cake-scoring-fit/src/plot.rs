//! Measured vs fitted layer shares, drawn with `plotters` (SVG or PNG by file extension).
//!
//! The workspace builds plotters with its `ab_glyph` text renderer, which draws no text
//! until a font is registered: the first plot registers the TTF file named by the
//! `CAKE_PLOT_FONT` environment variable, else the first of [`FONT_CANDIDATES`] that exists.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::collect::{LayerStatsRow, normalised_layer};
use crate::cv::check_target;
use crate::error::{FitError, Result};
use crate::poly::Poly;

/// Plot size in pixels.
const SIZE: (u32, u32) = (900, 560);

/// TTF files tried, in order, for the plot's text (after `CAKE_PLOT_FONT`).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font as plotters' "sans-serif" once; the error says what was tried.
fn ensure_font() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let from_env = std::env::var("CAKE_PLOT_FONT").ok();
            let candidates: Vec<&str> = from_env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied()).collect();
            for path in &candidates {
                let Ok(bytes) = std::fs::read(path) else { continue };
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
            Err(format!(
                "no usable TTF font for the plot text (tried {}); set CAKE_PLOT_FONT to a .ttf file",
                candidates.join(", ")
            ))
        })
        .clone()
}

/// Draws every sample's measured share per layer (light dots), the per-layer mean (blue
/// line with markers) and the fitted polynomial (red curve) against the layer index.
/// `rows` must be one fit target (see [`crate::rows_for_head`]). The format follows the
/// extension of `path`: `.svg` or `.png`.
pub fn plot_fit(rows: &[LayerStatsRow], fit: &Poly, path: &Path) -> Result<()> {
    check_target(rows)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let draw_err = |message: String| FitError::Plot {
        path: path.to_path_buf(),
        message,
    };
    if !matches!(ext.as_deref(), Some("svg" | "png")) {
        return Err(draw_err("unsupported extension; use .svg or .png".into()));
    }
    ensure_font().map_err(draw_err)?;
    match ext.as_deref() {
        Some("svg") => {
            draw(SVGBackend::new(path, SIZE).into_drawing_area(), rows, fit).map_err(draw_err)
        }
        Some("png") => draw(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            rows,
            fit,
        )
        .map_err(draw_err),
        _ => Err(draw_err("unsupported extension; use .svg or .png".into())),
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    rows: &[LayerStatsRow],
    fit: &Poly,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
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

    area.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "Layer preference share: measured vs fitted",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..last + 0.5, (lo - pad)..(hi + pad))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("layer")
        .y_desc("share of preference")
        .draw()
        .map_err(e)?;
    chart
        .draw_series(rows.iter().map(|r| {
            let layer = normalised_layer(r.layer, num_layers) * last;
            Circle::new(
                (layer, r.share),
                2,
                RGBColor(150, 150, 150).mix(0.4).filled(),
            )
        }))
        .map_err(e)?
        .label("measured (each sample)")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(150, 150, 150).filled()));
    chart
        .draw_series(LineSeries::new(means.iter().copied(), BLUE.stroke_width(2)).point_size(4))
        .map_err(e)?
        .label("measured (mean per layer)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(curve, RED.stroke_width(2)))
        .map_err(e)?
        .label(format!("fitted polynomial (degree {})", fit.degree()))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    area.present().map_err(e)?;
    Ok(())
}
