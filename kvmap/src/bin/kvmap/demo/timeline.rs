//! The closing picture: a timeline of latency, breaker state and who
//! served the reads, per second, as SVG (and the data as CSV).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::Second;

/// Writes `timeline.csv` and `timeline.svg` into `dir`, and
/// `timeline.png` when `rsvg-convert` (Debian's `librsvg2-bin`) is
/// installed; returns whether the PNG was written.
pub(crate) fn write(dir: &Path, seconds: &[Second], primary: &str) -> Result<bool, String> {
    let mut csv = String::from(
        "second,ops,errors,p50_ms,p99_ms,primary_breaker,reads_primary,reads_fallback,writes_primary,writes_fallback,outbox_depth,event\n",
    );
    for s in seconds {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{:.3},{},{},{},{},{},{},{}",
            s.t,
            s.ops,
            s.errors,
            s.p50_ms,
            s.p99_ms,
            s.primary_state,
            s.reads_primary,
            s.reads_fallback,
            s.writes_primary,
            s.writes_fallback,
            s.outbox,
            s.event.as_deref().unwrap_or("")
        );
    }
    std::fs::write(dir.join("timeline.csv"), csv).map_err(|e| format!("timeline.csv: {e}"))?;
    let svg_path = dir.join("timeline.svg");
    svg(&svg_path, seconds, primary).map_err(|e| format!("timeline.svg: {e}"))?;
    // plotters' bitmap backend needs a font library to draw text; the SVG
    // has none of that problem, so the PNG is rendered from it.
    let png = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(dir.join("timeline.png"))
        .arg(&svg_path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(png)
}

fn svg(path: &Path, seconds: &[Second], primary: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((3, 1));
    let end = seconds.last().map_or(1, |s| s.t + 1);
    let max_lat = seconds.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.1;

    let mut c = ChartBuilder::on(&areas[0])
        .caption(
            "chain latency per second (ms): p50 and p99",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(25)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..end, 0f64..max_lat)?;
    c.configure_mesh().x_desc("second").draw()?;
    c.draw_series(LineSeries::new(
        seconds.iter().map(|s| (s.t, s.p99_ms)),
        &RED,
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.draw_series(LineSeries::new(
        seconds.iter().map(|s| (s.t, s.p50_ms)),
        &BLUE,
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    c.configure_series_labels().border_style(BLACK).draw()?;

    let mut c = ChartBuilder::on(&areas[1])
        .caption(
            format!("breaker of {primary}: 0 closed, 1 half-open, 2 open"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(25)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..end, -0.2f64..2.2)?;
    c.configure_mesh().x_desc("second").y_labels(3).draw()?;
    c.draw_series(LineSeries::new(
        seconds.iter().map(|s| (s.t, s.primary_state_gauge)),
        &MAGENTA,
    ))?;

    let mut c = ChartBuilder::on(&areas[2])
        .caption("share of reads served by the fallback", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(25)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..end, 0f64..1.05)?;
    c.configure_mesh().x_desc("second").draw()?;
    c.draw_series(LineSeries::new(
        seconds.iter().map(|s| {
            let total = s.reads_primary + s.reads_fallback;
            let share = if total == 0 {
                0.0
            } else {
                s.reads_fallback as f64 / total as f64
            };
            (s.t, share)
        }),
        &GREEN,
    ))?;
    for s in seconds.iter().filter(|s| s.event.is_some()) {
        c.draw_series(std::iter::once(PathElement::new(
            vec![(s.t, 0.0), (s.t, 1.05)],
            BLACK.mix(0.3),
        )))?;
    }
    root.present()?;
    Ok(())
}
