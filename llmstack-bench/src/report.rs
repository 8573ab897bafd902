//! Recording outcomes and summarising them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{EngineDelta, Outcome};

/// Collects outcomes: latencies in HDR histograms (microseconds, 3 significant digits),
/// counts by status, tokens.
#[derive(Debug)]
pub struct Recorder {
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    reusable_prompt_tokens: u64,
}

/// p50 / p90 / p99 (and the mean) of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// The summary of a run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Report {
    /// The run's label (`--label`), for tables and charts.
    #[serde(default)]
    pub label: Option<String>,
    /// The offered load (open loop, multi-round QA), requests per second.
    #[serde(default)]
    pub target_qps: Option<f64>,
    /// Wall time of the run.
    pub seconds: f64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connect failure, cut connection).
    pub transport_errors: u64,
    /// Successful requests per second.
    pub requests_per_second: f64,
    /// Completion tokens per second (from `usage`).
    pub output_tokens_per_second: f64,
    /// Prompt tokens, from `usage`.
    pub prompt_tokens: u64,
    /// Completion tokens, from `usage`.
    pub completion_tokens: u64,
    /// Multi-round QA: prompt tokens an earlier request had already computed (the
    /// previous round's prompt and answer; for a first round, the shared system prompt
    /// at about four characters per token). Divided by `prompt_tokens`, the best prefix
    /// hit rate any router could reach.
    #[serde(default)]
    pub reusable_prompt_tokens: Option<u64>,
    /// Time to the first content chunk (streamed requests).
    pub ttft: Percentiles,
    /// Time between content chunks (streamed requests).
    pub itl: Percentiles,
    /// Request to end of response.
    pub e2e: Percentiles,
    /// What the engines counted during the run (with `--engine-metrics`).
    #[serde(default)]
    pub engines: Option<EngineDelta>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits: constant, valid bounds.
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant HDR histogram bounds are valid: {e}"),
    }
}

/// Adds `from` into `into`, clamping anything out of range (never fails).
fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    for v in from.iter_recorded() {
        into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

// === impl Recorder ===

impl Default for Recorder {
    fn default() -> Self {
        Self {
            ttft: histogram(),
            itl: histogram(),
            e2e: histogram(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            reusable_prompt_tokens: 0,
        }
    }
}

impl Recorder {
    /// Adds one request's outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        let Some(status) = outcome.status else {
            self.transport_errors += 1;
            return;
        };
        *self.statuses.entry(status).or_default() += 1;
        if !(200..300).contains(&status) {
            return;
        }
        self.e2e.saturating_record(micros(outcome.e2e));
        if let Some(ttft) = outcome.ttft {
            self.ttft.saturating_record(micros(ttft));
        }
        for gap in &outcome.itl {
            self.itl.saturating_record(micros(*gap));
        }
        self.prompt_tokens += outcome.prompt_tokens.unwrap_or(0);
        self.completion_tokens += outcome.completion_tokens.unwrap_or(0);
    }

    /// Adds everything another recorder saw.
    pub fn merge(&mut self, other: &Recorder) {
        add(&mut self.ttft, &other.ttft);
        add(&mut self.itl, &other.itl);
        add(&mut self.e2e, &other.e2e);
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.reusable_prompt_tokens += other.reusable_prompt_tokens;
    }

    /// Counts `tokens` of a successful request's prompt as reusable: an earlier request
    /// of the same conversation (or the shared system prompt) already computed them, so
    /// an ideal router and cache would serve them from the prefix cache.
    pub fn record_reusable(&mut self, tokens: u64) {
        self.reusable_prompt_tokens += tokens;
    }

    /// The summary over `elapsed` of wall time.
    pub fn report(&self, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ok: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        Report {
            label: None,
            target_qps: None,
            seconds: elapsed.as_secs_f64(),
            ok,
            statuses: self.statuses.clone(),
            transport_errors: self.transport_errors,
            requests_per_second: ok as f64 / secs,
            output_tokens_per_second: self.completion_tokens as f64 / secs,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            reusable_prompt_tokens: (self.reusable_prompt_tokens > 0)
                .then_some(self.reusable_prompt_tokens),
            ttft: percentiles(&self.ttft),
            itl: percentiles(&self.itl),
            e2e: percentiles(&self.e2e),
            engines: None,
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
    }
}

// === impl Report ===

impl Report {
    /// The header (two lines) of [`Report::markdown_row`]'s table.
    pub const MARKDOWN_HEADER: &'static str = "| run | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | e2e p50 ms | e2e p99 ms | errors | engine prefix hit |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// One Markdown table row for this run, labelled `label`.
    pub fn markdown_row(&self, label: &str) -> String {
        let errors: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.transport_errors;
        let hit = self
            .engines
            .and_then(|e| e.prefix_cache_hit_rate)
            .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
        format!(
            "| {label} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} | {hit} |",
            self.requests_per_second,
            self.output_tokens_per_second,
            self.ttft.p50_ms,
            self.ttft.p99_ms,
            self.itl.p50_ms,
            self.e2e.p50_ms,
            self.e2e.p99_ms,
        )
    }

    /// A few human-readable lines.
    pub fn human(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<5} p50 {:>9.3} ms  p90 {:>9.3} ms  p99 {:>9.3} ms  (n={})",
                p.p50_ms, p.p90_ms, p.p99_ms, p.count
            )
        };
        format!(
            "{} ok in {:.1} s: {:.1} req/s, {:.1} output tokens/s; statuses {:?}, transport errors {}\n{}\n{}\n{}",
            self.ok,
            self.seconds,
            self.requests_per_second,
            self.output_tokens_per_second,
            self.statuses,
            self.transport_errors,
            row("TTFT", &self.ttft),
            row("ITL", &self.itl),
            row("e2e", &self.e2e),
        ) + &self
            .engines
            .map(|e| {
                format!(
                    "\nengines: prefix-cache hit rate {} ({} of {} prompt tokens), {} preemptions",
                    e.prefix_cache_hit_rate
                        .map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0)),
                    e.prefix_cache_hits,
                    e.prefix_cache_queries,
                    e.preemptions
                )
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(e2e_us: u64) -> Outcome {
        Outcome {
            status: Some(200),
            ttft: Some(Duration::from_micros(e2e_us / 2)),
            itl: vec![Duration::from_micros(10)],
            e2e: Duration::from_micros(e2e_us),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            text: String::new(),
        }
    }

    /// Percentiles of 1..=10,000 µs match the exact ones within HDR precision (0.1%).
    #[test]
    fn percentiles_on_known_inputs() {
        let mut r = Recorder::default();
        for us in 1..=10_000 {
            r.record(&outcome(us));
        }
        let report = r.report(Duration::from_secs(2));
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(report.e2e.p50_ms, 5.0), "{:?}", report.e2e);
        assert!(close(report.e2e.p90_ms, 9.0), "{:?}", report.e2e);
        assert!(close(report.e2e.p99_ms, 9.9), "{:?}", report.e2e);
        assert_eq!(report.ok, 10_000);
        assert_eq!(report.requests_per_second, 5000.0);
        assert_eq!(
            (report.prompt_tokens, report.completion_tokens),
            (30_000, 20_000)
        );
    }

    #[test]
    fn markdown_rows_fit_the_header() {
        let mut r = Recorder::default();
        r.record(&outcome(2000));
        let row = r.report(Duration::from_secs(1)).markdown_row("rr");
        let columns = |s: &str| s.matches('|').count();
        assert_eq!(
            columns(&row),
            columns(Report::MARKDOWN_HEADER.lines().next().unwrap())
        );
        assert!(row.starts_with("| rr | 1.0 |"), "{row}");
    }

    #[test]
    fn errors_are_counted_not_timed() {
        let mut r = Recorder::default();
        r.record(&Outcome {
            status: Some(503),
            ..outcome(100)
        });
        r.record(&Outcome {
            status: None,
            ..outcome(100)
        });
        let mut total = Recorder::default();
        total.merge(&r);
        let report = total.report(Duration::from_secs(1));
        assert_eq!((report.ok, report.transport_errors), (0, 1));
        assert_eq!(report.statuses[&503], 1);
        assert_eq!(report.e2e.count, 0);
    }
}
