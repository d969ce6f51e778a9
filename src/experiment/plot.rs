//! Line charts with optional error bars, written as PNG and SVG by `plotters`. The labels use a
//! TrueType font read at run time (DejaVu Sans, from `fonts-dejavu-core`, or `MICN_FONT`), so no
//! fontconfig library is linked.
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Why a figure could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "no TrueType font for the plot labels: install fonts-dejavu-core (cluster/setup-node.sh does) or set \
         MICN_FONT to a .ttf file (tried {tried})"
    )]
    NoFont { tried: String },
    #[error("{path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// Where the font may be; `MICN_FONT` first.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The largest font file read (DejaVu Sans is 0.7 MB; CJK fonts some tens of MB).
const MAX_FONT_BYTES: u64 = 64 << 20;

/// Register the label font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = REGISTERED.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("MICN_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(FONT_PATHS.iter().map(PathBuf::from));
        // A font is a regular file of some MB: anything else (`/dev/zero`, a FIFO) is passed over
        // rather than read whole.
        let font = |path: &PathBuf| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_FONT_BYTES);
        if let Some(given) = candidates.first().filter(|p| std::env::var_os("MICN_FONT").is_some() && !font(p)) {
            tracing::warn!(
                "MICN_FONT={}: not a font file (a regular file of at most 64 MB); passed over",
                given.display()
            );
        }
        for path in candidates.iter().filter(|p| font(p)) {
            if let Ok(bytes) = std::fs::read(path) {
                // The font table wants 'static bytes: one font, leaked once per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
    });
    outcome.clone().map_err(|tried| PlotError::NoFont { tried })
}

/// One point; `err` draws a vertical bar from `y - err` to `y + err`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: Option<f64>,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// One chart of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Label the x axis with whole numbers (steps).
    pub x_whole: bool,
    pub series: Vec<Series>,
}

/// Tableau's ten colours: distinct in print and for most colour-blind readers.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const PANEL_SIZE: (u32, u32) = (760, 560);

/// Write `stem.png` and `stem.svg`: the panels in rows of `per_row`. Returns both paths.
pub fn write_figure(stem: &Path, panels: &[Panel], per_row: usize) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    let columns = per_row.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (PANEL_SIZE.0 * columns as u32, PANEL_SIZE.1 * rows as u32);
    // Appended, not `with_extension`: a stem may hold a dot (`auc-vs-micn.phi`).
    let with = |ext: &str| {
        let mut name = stem.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    let (png, svg) = (with(".png"), with(".svg"));
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |e: String| PlotError::Draw { path, message: e }
    };
    let grid = (rows, columns);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), panels, grid).map_err(fail(&png))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), panels, grid).map_err(fail(&svg))?;
    Ok(vec![png, svg])
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    grid: (usize, usize),
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly(grid);
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(area, panel).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Data range padded by 5% (and widened when flat), error bars included.
fn range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.05 * lo.abs().max(1e-3) };
    (lo - pad)..(hi + pad)
}

/// A tick label with as many decimals as the axis span needs (no `0.30000000000000004`).
fn tick(value: f64, axis: &Range<f64>) -> String {
    let step = (axis.end - axis.start).abs() / 10.0;
    let decimals = if step > 0.0 { (-step.log10()).ceil().clamp(0.0, 12.0) as usize } else { 3 };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// A tick label on an axis of whole numbers (steps): none between them (a narrow axis, one
/// logged step, has ticks at 19.2, 19.4, …), which rounded would repeat their neighbours'.
fn whole_tick(value: f64) -> String {
    match (value - value.round()).abs() > 1e-6 {
        true => String::new(),
        false => format!("{value:.0}"),
    }
}

/// The legend corner with the fewest points near it (of the four).
fn emptiest_corner(panel: &Panel, xr: &Range<f64>, yr: &Range<f64>) -> SeriesLabelPosition {
    let mut counts = [0usize; 4];
    for p in panel.series.iter().flat_map(|s| &s.points) {
        let right = p.x > (xr.start + xr.end) / 2.0;
        let upper = p.y > (yr.start + yr.end) / 2.0;
        counts[usize::from(upper) * 2 + usize::from(right)] += 1;
    }
    let corners = [
        SeriesLabelPosition::LowerLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::UpperRight,
    ];
    // Ties go to the right-hand corners, where curves over steps usually have room.
    let best = [3usize, 1, 2, 0].into_iter().min_by_key(|&i| counts[i]).expect("four corners");
    corners[best].clone()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || panel.series.iter().flat_map(|s| &s.points);
    let xr = range(points().map(|p| p.x));
    let yr = range(points().flat_map(|p| {
        let e = p.err.unwrap_or(0.0);
        [p.y - e, p.y + e]
    }));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(xr.clone(), yr.clone())?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .x_label_formatter(&|x| if panel.x_whole { whole_tick(*x) } else { tick(*x, &xr) })
        .y_label_formatter(&|y| tick(*y, &yr))
        .y_desc(&panel.y_label)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Past ten series the colours repeat: the repeats are drawn thinner and hollow.
        let width = if i < COLOURS.len() { 2 } else { 1 };
        let line = ShapeStyle { color: colour.to_rgba(), filled: false, stroke_width: width };
        chart
            .draw_series(LineSeries::new(series.points.iter().map(|p| (p.x, p.y)), line))?
            .label(&series.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
        if series.points.len() <= 40 {
            let marker = ShapeStyle { color: colour.to_rgba(), filled: i < COLOURS.len(), stroke_width: 1 };
            chart.draw_series(series.points.iter().map(|p| Circle::new((p.x, p.y), 3, marker)))?;
        }
        let bars = series.points.iter().filter_map(|p| p.err.map(|e| (p, e)));
        chart.draw_series(
            bars.map(|(p, e)| ErrorBar::new_vertical(p.x, p.y - e, p.y, p.y + e, colour.stroke_width(width), 10)),
        )?;
    }
    if panel.series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(emptiest_corner(panel, &xr, &yr))
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> Panel {
        Panel {
            title: "test AUC".into(),
            x_label: "micn.phi".into(),
            y_label: "AUC".into(),
            x_whole: false,
            series: vec![Series {
                label: "dien".into(),
                points: vec![
                    Point { x: 0.1, y: 0.70, err: Some(0.01) },
                    Point { x: 0.5, y: 0.72, err: Some(0.02) },
                    Point { x: 1.0, y: 0.71, err: None },
                ],
            }],
        }
    }

    #[test]
    fn writes_a_png_and_an_svg_with_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_figure(&dir.path().join("auc"), &[panel(), panel(), panel()], 2).unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        for text in ["test AUC", "micn.phi", "dien"] {
            assert!(svg.contains(text), "the SVG lacks {text:?}");
        }
    }

    #[test]
    fn ranges_cover_error_bars_and_survive_a_flat_series() {
        let r = range([0.5, 0.7].into_iter());
        assert!(r.start < 0.5 && r.end > 0.7);
        let flat = range([2.0, 2.0].into_iter());
        assert!(flat.start < 2.0 && flat.end > 2.0);
        assert_eq!(range(std::iter::empty()), 0.0..1.0);
    }

    #[test]
    fn whole_number_ticks_label_whole_numbers_only() {
        let labels: Vec<String> = [19.0, 19.2, 19.8, 20.0, 20.000000001, 1e9, 1e9 + 0.5].map(whole_tick).into();
        assert_eq!(labels, ["19", "", "", "20", "20", "1000000000", ""]);
    }

    #[test]
    fn ticks_have_the_decimals_the_axis_needs() {
        assert_eq!(tick(0.1 + 0.2, &(0.0..1.0)), "0.3");
        assert_eq!(tick(0.832, &(0.82..0.835)), "0.832");
        assert_eq!(tick(0.83, &(0.82..0.835)), "0.83");
        assert_eq!(tick(1500.0, &(0.0..3000.0)), "1500");
        assert_eq!(tick(-0.0001, &(-1.0..1.0)), "0");
    }

    #[test]
    fn the_legend_goes_where_the_points_are_not() {
        let p = panel();
        let pos = emptiest_corner(&p, &(0.0..1.0), &(0.0..1.0));
        // Every point lies in the upper half; the right-hand lower corner wins the tie.
        assert!(matches!(pos, SeriesLabelPosition::LowerRight));
    }
}
