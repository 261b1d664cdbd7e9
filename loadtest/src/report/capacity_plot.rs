//! SVG plot of a capacity run: connections over time (top) and memory by component over time
//! (bottom), from the sampled timeline.

use std::path::Path;

use plotters::prelude::*;

use super::{capacity::MemSample, plot::PlotError};

/// Draws `samples` to an SVG file at `path`.
pub fn capacity_svg(path: &Path, title: &str, samples: &[MemSample]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::new(path, e);
    let t_max = samples.last().map_or(1.0, |s| s.t_s.max(1.0));
    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(300);
    let open_max = samples.iter().map(|s| s.open).max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut c = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..open_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .y_desc("open connections")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()
        .map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(
        samples.iter().map(|s| (s.t_s, s.open as f64)),
        RGBColor(31, 119, 180).stroke_width(2),
    ))
    .map_err(|e| err(&e))?;
    type Series = (&'static str, RGBColor, fn(&MemSample) -> u64);
    let series: [Series; 5] = [
        ("gateways RSS", RGBColor(31, 119, 180), |s| {
            s.gateways_rss_kb
        }),
        ("load generator RSS", RGBColor(44, 160, 44), |s| {
            s.workers_rss_kb
        }),
        ("redis RSS", RGBColor(214, 39, 40), |s| s.redis_rss_kb),
        ("kernel slab", RGBColor(255, 127, 14), |s| s.slab_kb),
        ("kernel TCP buffers", RGBColor(120, 120, 120), |s| {
            s.tcp_mem_kb
        }),
    ];
    let mem_max = samples
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1024.0
        * 1.1;
    let mut m = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..mem_max)
        .map_err(|e| err(&e))?;
    m.configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("memory (MiB)")
        .light_line_style(RGBColor(245, 245, 245))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, color, get) in series {
        m.draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, get(s) as f64 / 1024.0)),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    m.configure_series_labels()
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
    fn writes_both_panels() {
        let samples: Vec<MemSample> = (0..5)
            .map(|i| MemSample {
                t_s: f64::from(i),
                open: u64::from(i as u32) * 1000,
                gateways_rss_kb: 1000 + u64::from(i as u32) * 800,
                workers_rss_kb: 900,
                redis_rss_kb: 5000,
                slab_kb: 100_000,
                tcp_mem_kb: 40,
                ..MemSample::default()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("lt-cplot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        capacity_svg(&path, "test", &samples).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("kernel slab"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
