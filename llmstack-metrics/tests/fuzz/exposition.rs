//! The exposition targets: generated `/metrics` text (vLLM's series, labels, every
//! float spelling, lines to skip) and arbitrary text, read by [`parse`] and
//! [`engine_stats`](llmstack_metrics::engine_stats).

use std::collections::HashMap;

use llmstack_core::EngineStats;
use llmstack_metrics::{parse, vllm};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::time::Instant;

use crate::oracle::{Owned, check_stats};
use crate::{config, same};

/// Every series name the stats read, and a few others.
fn series_name() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = [
        vllm::RUNNING,
        vllm::WAITING,
        vllm::KV_CACHE_USAGE,
        vllm::PREFIX_CACHE_QUERIES,
        vllm::PREFIX_CACHE_HITS,
        vllm::PREEMPTIONS,
        &[vllm::CACHE_CONFIG_INFO, vllm::LORA_REQUESTS_INFO],
        &["vllm:other", "process_cpu_seconds_total"],
    ]
    .concat();
    prop_oneof![
        8 => prop::sample::select(known).prop_map(str::to_owned),
        1 => "[a-zA-Z_:][a-zA-Z0-9_:]{0,16}",
    ]
}

/// Any short text, and characters the format escapes.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ,._/-]{0,12}",
        2 => vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
        1 => vec(
            prop::sample::select(&['"', '\\', '\n', 'n', '}', '{', '=', ',', ' ', '#', '\r', 'é'][..]),
            0..6,
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
}

/// A label: the ones the stats read, with values of their kind, or any other.
fn label() -> impl Strategy<Value = (String, String)> {
    let lora = vec(
        prop::sample::select(&["sql-lora", " chat-lora ", "", "a b"][..]),
        0..4,
    )
    .prop_map(|v| v.join(","));
    prop_oneof![
        3 => prop::sample::select(&["m", "meta-llama/Llama-3.1-8B-Instruct", "", "m \"q\""][..])
            .prop_map(|m| ("model_name".to_owned(), m.to_owned())),
        1 => (0u8..4).prop_map(|e| ("engine".to_owned(), e.to_string())),
        2 => prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            (u64::MAX - 3..=u64::MAX).prop_map(|n| n.to_string()),
            text(),
        ]
        .prop_map(|v| ("num_gpu_blocks".to_owned(), v)),
        1 => prop_oneof![any::<u32>().prop_map(|n| n.to_string()), Just("16".to_owned()), text()]
            .prop_map(|v| ("block_size".to_owned(), v)),
        1 => (
            prop::sample::select(&["running_lora_adapters", "waiting_lora_adapters"][..]),
            lora,
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        1 => ("[a-zA-Z_][a-zA-Z0-9_]{0,8}", text()),
    ]
}

/// A sample value as written, and the number it means: Go's and Rust's float
/// spellings, the special values, huge and tiny exponents.
fn value() -> impl Strategy<Value = (String, f64)> {
    let float = prop_oneof![
        3 => (0u32..64).prop_map(f64::from),
        2 => 0.0..1.0f64,
        2 => any::<f64>().prop_map(finite),
        1 => prop::sample::select(&[f64::MAX, -f64::MAX, 1e308, f64::MIN_POSITIVE, 5e-324, -0.0][..]),
    ];
    prop_oneof![
        6 => (float, 0u8..5).prop_map(|(v, style)| {
            let repr = match style {
                0 => format!("{v}"),
                1 => format!("{v:e}"),
                2 => format!("{v:E}"),
                3 => go_float(v),
                _ if v.is_sign_negative() => format!("{v}"),
                _ => format!("+{v}"),
            };
            (repr, v)
        }),
        2 => prop::sample::select(&[
            ("NaN", f64::NAN),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("Inf", f64::INFINITY),
            ("inf", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("nan", f64::NAN),
            ("1e400", f64::INFINITY),
            ("-1e400", f64::NEG_INFINITY),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
            ("2e308", f64::INFINITY),
            ("1e+09", 1e9),
            ("0", 0.0),
            ("-0", -0.0),
            ("00012", 12.0),
            (".5", 0.5),
            ("5.", 5.0),
        ][..])
        .prop_map(|(r, v)| (r.to_owned(), v)),
    ]
}

/// `f`, or the largest float for NaN and the infinities (no filter: its rejections
/// would add up over millions of cases).
fn finite(f: f64) -> f64 {
    if f.is_finite() {
        f
    } else {
        f64::MAX.copysign(f)
    }
}

/// `v` as Go writes a float in the exposition: `1.795481992456e+09`.
fn go_float(v: f64) -> String {
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let exp: i32 = exp.parse().unwrap();
            let sign = if exp < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exp.abs())
        }
        None => s,
    }
}

/// A label value written with the format's escapes.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One sample line as generated, with how it is spaced.
#[derive(Debug, Clone)]
struct GenSample {
    name: String,
    /// `None`: no braces at all.
    labels: Option<Vec<(String, String)>>,
    value: (String, f64),
    timestamp: Option<i64>,
    lead: &'static str,
    inner: &'static str,
    sep: &'static str,
    eq: &'static str,
    trailing_comma: bool,
    gap: &'static str,
}

#[derive(Debug, Clone)]
enum Line {
    Sample(GenSample),
    /// A line that is not a sample (comment, blank, broken): skipped.
    Skipped(String),
}

fn gen_sample() -> impl Strategy<Value = GenSample> {
    (
        series_name(),
        prop::option::weighted(0.8, vec(label(), 0..4)),
        value(),
        prop::option::weighted(0.2, any::<i64>()),
        (
            prop::sample::select(&["", " ", "\t", "  "][..]),
            prop::sample::select(&["", " "][..]),
            prop::sample::select(&[",", ", ", " , ", ",,"][..]),
            prop::sample::select(&["=", " = ", "= "][..]),
            any::<bool>(),
            prop::sample::select(&["", " ", "\t", "  "][..]),
        ),
    )
        .prop_map(
            |(name, labels, value, timestamp, (lead, inner, sep, eq, trailing_comma, gap))| {
                GenSample {
                    name,
                    labels,
                    value,
                    timestamp,
                    lead,
                    inner,
                    sep,
                    eq,
                    trailing_comma,
                    gap,
                }
            },
        )
}

impl GenSample {
    fn render(&self) -> String {
        let mut out = format!("{}{}", self.lead, self.name);
        match &self.labels {
            None => {}
            Some(labels) => {
                out.push('{');
                out.push_str(self.inner);
                let written: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}{}\"{}\"", self.eq, escape(v)))
                    .collect();
                out.push_str(&written.join(self.sep));
                if self.trailing_comma {
                    out.push(',');
                }
                out.push_str(self.inner);
                out.push('}');
            }
        }
        // Without braces, the name ends at whitespace.
        let gap = match (self.labels.is_none(), self.gap) {
            (true, "") => " ",
            (_, gap) => gap,
        };
        out.push_str(gap);
        out.push_str(&self.value.0);
        if let Some(ts) = self.timestamp {
            out.push_str(&format!(" {ts}"));
        }
        out
    }
}

fn line() -> impl Strategy<Value = Line> {
    let skipped = prop_oneof![
        Just(
            "# HELP vllm:num_requests_running Number of requests in model execution batches."
                .to_owned()
        ),
        Just("# TYPE vllm:num_requests_running gauge".to_owned()),
        "#[ -~]{0,20}",
        "[ \t]{0,3}",
        // A name and labels without a value.
        (series_name(), "[ \t]{0,2}").prop_map(|(n, sp)| format!("{n}{sp}")),
        series_name().prop_map(|n| format!("{n}{{model_name=\"m\"}}")),
        // Labels that never close.
        (series_name(), text()).prop_map(|(n, v)| format!("{n}{{model_name=\"{}", escape(&v))),
        (series_name(), text()).prop_map(|(n, v)| format!("{n}{{model_name=\"{}\" 1", escape(&v))),
        // A label without a quoted value.
        series_name().prop_map(|n| format!("{n}{{model_name=m}} 1")),
        // Values that are not numbers.
        (
            series_name(),
            prop::sample::select(
                &[
                    "abc", "1.2.3", "--1", "0x10", "1e", "NaNx", "+-1", "1_000", "Inf1"
                ][..]
            ),
        )
            .prop_map(|(n, v)| format!("{n} {v}")),
        // No name.
        "\\{[ -~]{0,12}",
    ];
    prop_oneof![
        4 => gen_sample().prop_map(Line::Sample),
        1 => skipped.prop_map(Line::Skipped),
    ]
}

/// The last scrape of the same engine, for the hit rate.
fn previous() -> impl Strategy<Value = Option<EngineStats>> {
    let counter = prop_oneof![
        Just(0.0),
        (0u32..100_000).prop_map(f64::from),
        any::<f64>().prop_map(finite),
        Just(f64::MAX),
    ];
    prop::option::of((counter.clone(), counter)).prop_map(|c| {
        c.map(|(queries, hits)| EngineStats {
            running: 0.0,
            waiting: 0.0,
            kv_cache_usage: 0.0,
            prefix_cache_queries: queries,
            prefix_cache_hits: hits,
            prefix_cache_hit_rate: None,
            num_gpu_blocks: None,
            block_size: None,
            lora_running: Vec::new(),
            lora_waiting: Vec::new(),
            models: HashMap::new(),
            scraped_at: Instant::now(),
        })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Generated expositions: every sample line reads back as written (name, labels
    /// unescaped, value), every other line is skipped, and the stats add up.
    #[test]
    fn fuzz_exposition_structured(
        lines in vec(line(), 0..12),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
        previous in previous(),
    ) {
        let mut text = lines
            .iter()
            .map(|l| match l {
                Line::Sample(s) => s.render(),
                Line::Skipped(s) => s.clone(),
            })
            .collect::<Vec<_>>()
            .join(if crlf { "\r\n" } else { "\n" });
        if final_newline {
            text.push('\n');
        }
        let want: Vec<Owned> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Sample(s) => Some(Owned {
                    name: s.name.clone(),
                    labels: s.labels.clone().unwrap_or_default(),
                    value: s.value.1,
                }),
                Line::Skipped(_) => None,
            })
            .collect();
        let got: Vec<Owned> = parse(&text).map(|s| Owned::of(&s)).collect();
        prop_assert_eq!(got.len(), want.len(), "{:?}", text);
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(&g.name, &w.name, "{:?}", text);
            prop_assert_eq!(&g.labels, &w.labels, "{:?}", text);
            prop_assert!(same(g.value, w.value), "{} != {} in {:?}", g.value, w.value, text);
        }
        check_stats(&want, &text, previous.as_ref())?;
    }

    /// Arbitrary text, and text of the format's characters: never a panic; samples
    /// have a name; the stats are those of what was parsed.
    #[test]
    fn fuzz_exposition_text(
        text in prop_oneof![
            ".{0,80}",
            "[a-z_:{}=\", \\\\\n\t#.0-9e+-]{0,80}",
            vec(prop_oneof![
                Just("vllm:num_requests_running".to_owned()),
                Just("vllm:cache_config_info".to_owned()),
                Just("vllm:prefix_cache_hits_total".to_owned()),
                Just("{num_gpu_blocks=\"".to_owned()),
                Just("\"}".to_owned()),
                Just(" NaN".to_owned()),
                Just(" 1e308".to_owned()),
                Just("\n".to_owned()),
                "[ -~]{0,3}",
            ], 0..20).prop_map(|v| v.concat()),
        ],
        previous in previous(),
    ) {
        let samples: Vec<Owned> = parse(&text).map(|s| Owned::of(&s)).collect();
        for s in &samples {
            prop_assert!(!s.name.is_empty());
            prop_assert!(!s.name.contains(|c: char| c == '{' || c.is_ascii_whitespace()), "{:?}", s.name);
        }
        check_stats(&samples, &text, previous.as_ref())?;
    }
}
