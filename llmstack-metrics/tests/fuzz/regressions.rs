//! Bugs the fuzz targets found, kept as regression tests.

use llmstack_metrics::engine_stats;
use tokio::time::Instant;

/// Found by `fuzz_exposition_structured`: `engine_stats` adds the `num_gpu_blocks`
/// labels of data-parallel ranks with `+` (`stats.rs`, `.reduce(|a, b| a + b)`), which
/// panics in debug builds (overflow checks) and wraps in release, for label values an
/// engine (or anything answering on its port) controls.
#[test]
fn num_gpu_blocks_that_overflow() {
    let text = "vllm:cache_config_info{num_gpu_blocks=\"3\"} 0\n\
                vllm:cache_config_info{num_gpu_blocks=\"18446744073709551613\"} 0\n";
    let stats = engine_stats(text, None, Instant::now());
    // Whatever the fix (saturate, or no sum), never fewer blocks than one rank has.
    assert!(
        stats
            .num_gpu_blocks
            .is_none_or(|n| n >= 18_446_744_073_709_551_613),
        "{:?}",
        stats.num_gpu_blocks
    );
}

/// Found by reading `engine_stats` for the fuzz target's invariant: prefix-cache
/// counters whose finite samples add up to infinity give `Some(NaN)` as the hit rate
/// (`inf / inf`; `clamp` keeps NaN), outside the documented 0..1.
#[test]
fn hit_rate_of_counters_that_sum_to_infinity() {
    let previous = engine_stats(
        "vllm:prefix_cache_queries_total 0\nvllm:prefix_cache_hits_total 0\n",
        None,
        Instant::now(),
    );
    let text = "vllm:prefix_cache_queries_total 1e308\n\
                vllm:prefix_cache_queries_total 1e308\n\
                vllm:prefix_cache_hits_total 1e308\n\
                vllm:prefix_cache_hits_total 1e308\n";
    let stats = engine_stats(text, Some(&previous), Instant::now());
    let rate = stats.prefix_cache_hit_rate;
    assert!(rate.is_none_or(|r| (0.0..=1.0).contains(&r)), "{rate:?}");
}
