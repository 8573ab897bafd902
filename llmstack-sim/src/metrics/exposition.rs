//! The text exposition writer: `# HELP`/`# TYPE` headers and labelled samples.
//!
//! Also which names to expose ([`MetricsCompat`]) and the engine facts every sample
//! repeats ([`ExpositionInfo`]).

use std::fmt::Write as _;

use super::format::{escape_label, format_float};
use super::histogram::Histogram;

/// Which metric names to expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsCompat {
    /// vLLM V1 names (0.10+), labels `engine` and `model_name`.
    #[default]
    V1,
    /// The old V0 names (`vllm:gpu_cache_usage_perc`, …), label `model_name` only.
    V0,
}

/// Static facts of the engine the exposition needs.
#[derive(Debug, Clone)]
pub(crate) struct ExpositionInfo {
    pub(crate) model_name: String,
    pub(crate) engine: String,
    pub(crate) compat: MetricsCompat,
    pub(crate) block_size: usize,
    pub(crate) num_gpu_blocks: usize,
    pub(crate) enable_prefix_caching: bool,
    pub(crate) hash_algo: &'static str,
    pub(crate) gpu_memory_utilization: f64,
    /// `Some(max_loras)` when LoRA is enabled.
    pub(crate) max_loras: Option<usize>,
    pub(crate) admission_control: bool,
    /// Unix time the series were created (engine start).
    pub(crate) created: f64,
}

/// Builds the text exposition, one family at a time.
pub(super) struct Expo<'a> {
    pub(super) out: String,
    pub(super) info: &'a ExpositionInfo,
    /// Whether samples carry the `engine` label (V1 names; not on every family).
    pub(super) engine_label: bool,
}

// === impl MetricsCompat ===

impl std::str::FromStr for MetricsCompat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Self::V1),
            "v0" => Ok(Self::V0),
            other => Err(format!("unknown metrics compat {other:?} (v1, v0)")),
        }
    }
}

// === impl Expo ===

impl<'a> Expo<'a> {
    pub(super) fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `extra` labels are merged with `engine`/`model_name` in name order.
    pub(super) fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: f64) {
        let mut labels: Vec<(&str, String)> =
            extra.iter().map(|(k, v)| (*k, escape_label(v))).collect();
        labels.push(("model_name", escape_label(&self.info.model_name)));
        if self.engine_label {
            labels.push(("engine", escape_label(&self.info.engine)));
        }
        labels.sort_by(|a, b| a.0.cmp(b.0));
        self.out.push_str(name);
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{v}\"");
        }
        let _ = writeln!(self.out, "}} {}", format_float(value));
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], value);
    }

    /// A counter family `name_total` plus its `name_created` gauge family.
    pub(super) fn counter(&mut self, base: &str, help: &str, series: &[(&[(&str, &str)], u64)]) {
        let total = format!("{base}_total");
        self.header(&total, help, "counter");
        for (labels, v) in series {
            self.sample(&total, labels, *v as f64);
        }
        let created = format!("{base}_created");
        self.header(&created, help, "gauge");
        for (labels, _) in series {
            self.sample(&created, labels, self.info.created);
        }
    }

    pub(super) fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cum = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
            self.sample(&bucket, &[("le", &le)], cum as f64);
        }
        self.sample(&format!("{name}_count"), &[], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        let created = format!("{name}_created");
        self.header(&created, help, "gauge");
        self.sample(&created, &[], self.info.created);
    }
}
