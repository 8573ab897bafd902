//! TTFT against offered load, across runs, as an SVG chart.

use std::collections::BTreeMap;
use std::fmt;

use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

use crate::Report;

/// Draws median and p99 TTFT (ms) against the offered load of each run (its target QPS,
/// else its achieved req/s), one line per label, into an SVG document.
///
/// Fails when there is nothing to draw or plotting fails.
pub fn ttft_chart(reports: &[Report]) -> Result<String, ChartError> {
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.ttft.count > 0) {
        let x = r.target_qps.unwrap_or(r.requests_per_second);
        series
            .entry(r.label.clone().unwrap_or_else(|| "run".into()))
            .or_default()
            .push((x, r.ttft.p50_ms, r.ttft.p99_ms));
    }
    if series.is_empty() {
        return Err(ChartError::NothingToChart);
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = series.values().flatten();
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max) * 1.1 + 1e-9;
    let y_max = all.map(|p| p.2).fold(0.0, f64::max) * 1.1 + 1e-9;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(ChartError::Plot)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Time to first token vs offered load", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(ChartError::Plot)?;
        chart
            .configure_mesh()
            .x_desc("requests per second")
            .y_desc("TTFT (ms)")
            .draw()
            .map_err(ChartError::Plot)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(ChartError::Plot)?
                .label(format!("{label} p50"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.2)),
                    color.stroke_width(1),
                ))
                .map_err(ChartError::Plot)?
                .label(format!("{label} p99"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
                )
                .map_err(ChartError::Plot)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(ChartError::Plot)?;
        root.present().map_err(ChartError::Plot)?;
    }
    Ok(svg)
}

/// Why [`ttft_chart`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChartError {
    /// No report has a TTFT sample (TTFT needs streamed runs).
    NothingToChart,
    /// Plotting failed.
    Plot(DrawingAreaErrorKind<std::io::Error>),
}

// === impl ChartError ===

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NothingToChart => f.write_str("no streamed runs to chart (TTFT needs streaming)"),
            Self::Plot(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NothingToChart => None,
            Self::Plot(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Outcome, Recorder};

    fn report(label: &str, qps: f64, ttft_ms: u64) -> Report {
        let mut r = Recorder::default();
        r.record(&Outcome {
            status: Some(200),
            ttft: Some(Duration::from_millis(ttft_ms)),
            itl: vec![],
            e2e: Duration::from_millis(ttft_ms * 2),
            prompt_tokens: None,
            completion_tokens: None,
            text: String::new(),
        });
        let mut report = r.report(Duration::from_secs(1));
        report.label = Some(label.into());
        report.target_qps = Some(qps);
        report
    }

    #[test]
    fn one_line_per_label_in_an_svg() {
        let reports = [
            report("roundrobin", 1.0, 20),
            report("roundrobin", 2.0, 40),
            report("session", 1.0, 10),
            report("session", 2.0, 15),
        ];
        let svg = ttft_chart(&reports).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        for text in ["roundrobin p50", "session p99", "Time to first token"] {
            assert!(svg.contains(text), "{text}");
        }
        // JSON reports round-trip, as `llmstack-bench chart` reads them.
        let json = serde_json::to_string(&reports[0]).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), reports[0]);
        let err = ttft_chart(&[]).unwrap_err();
        assert!(matches!(err, ChartError::NothingToChart), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no streamed runs to chart (TTFT needs streaming)"
        );
    }
}
