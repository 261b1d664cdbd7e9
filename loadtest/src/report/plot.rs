//! SVG plot of latency percentiles over time (log scale), one line per percentile.

use std::path::Path;

use plotters::prelude::*;
use thiserror::Error;

use super::TimelinePoint;

/// The plot could not be drawn or written.
#[derive(Debug, Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

impl PlotError {
    /// An error drawing or writing `path`.
    pub fn new(path: &Path, e: &dyn std::fmt::Display) -> Self {
        Self {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

pub use super::capacity_plot::capacity_svg;

/// Draws `points` (with delivered > 0) to an SVG file at `path`.
pub fn latency_svg(path: &Path, title: &str, points: &[TimelinePoint]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let pts: Vec<&TimelinePoint> = points.iter().filter(|p| p.delivered > 0).collect();
    let t_max = pts.last().map_or(1.0, |p| p.t_s + 1.0);
    // Microseconds on the axis (log ticks at 100, 200, ... need values above 1), labelled in ms.
    let y_max = pts.iter().map(|p| p.max_us).max().unwrap_or(1000).max(10) as f64 * 1.5;
    let y_min = pts.iter().map(|p| p.p50_us).min().unwrap_or(1).max(2) as f64 / 1.5;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since phase start (s)")
        .y_desc("latency (ms, log)")
        .y_label_formatter(&|us| format!("{}", us / 1000.0))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()
        .map_err(|e| err(&e))?;
    type Series = (&'static str, RGBColor, fn(&TimelinePoint) -> u64);
    let series: [Series; 5] = [
        ("p50", RGBColor(31, 119, 180), |p| p.p50_us),
        ("p90", RGBColor(44, 160, 44), |p| p.p90_us),
        ("p99", RGBColor(255, 127, 14), |p| p.p99_us),
        ("p99.9", RGBColor(214, 39, 40), |p| p.p999_us),
        ("max", RGBColor(120, 120, 120), |p| p.max_us),
    ];
    for (name, color, get) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter()
                    .map(|p| (p.t_s, (get(p).max(1) as f64).max(y_min))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_all_series() {
        let pts: Vec<TimelinePoint> = (0..5)
            .map(|i| TimelinePoint {
                t_s: f64::from(i),
                delivered: 100,
                p50_us: 200,
                p90_us: 400,
                p99_us: 900,
                p999_us: 1500,
                max_us: 3000 + u64::from(i as u32) * 100,
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("lt-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        latency_svg(&path, "test", &pts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("p99.9") && svg.contains("polyline"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
