//! Crash mid-stream: an engine cuts its connections after a few SSE events. Its
//! streams must end visibly (an error event then `[DONE]`, or a cut connection),
//! never as a shorter stream that looks complete; the other engines' streams are whole.

use llmstack_sim::FaultConfig;

use crate::support::*;

const STREAMS: usize = 60;
const TOKENS: usize = 20;
const CUT_AFTER: u32 = 3;

/// How a stream ended, as its client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Every token, then `[DONE]`.
    Whole,
    /// Some tokens, an error event (502), `[DONE]`.
    Error { tokens: usize },
    /// Some tokens, then the connection was cut (not at an event boundary).
    Cut,
}

fn ending(st: &Stream) -> Ending {
    assert_eq!(st.status, 200, "{}", st.raw);
    let is_token = |e: &Event| e.data != "[DONE]" && e.json()["choices"][0]["text"].is_string();
    if st.broken {
        assert!(
            st.events.iter().all(is_token),
            "a cut stream has only tokens: {}",
            st.raw
        );
        return Ending::Cut;
    }
    let n = st.events.len();
    assert!(n >= 2, "{}", st.raw);
    assert_eq!(
        st.events[n - 1].data,
        "[DONE]",
        "a stream that ends cleanly ends with [DONE]: {}",
        st.raw
    );
    let body = &st.events[..n - 1];
    if body.iter().all(is_token) {
        assert_eq!(
            body.len(),
            TOKENS,
            "a stream without an error event must be whole: {}",
            st.raw
        );
        return Ending::Whole;
    }
    let (last, tokens) = body.split_last().unwrap();
    assert!(tokens.iter().all(is_token), "{}", st.raw);
    let err = last.json();
    assert_eq!(err["error"]["code"], 502, "{}", st.raw);
    Ending::Error {
        tokens: tokens.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_crashing_mid_stream_never_yields_a_silently_truncated_stream() {
    let s = stack(vec![instant(), instant(), instant()], |_| {}).await;
    let metrics_before = s.metrics().await;
    s.engines[0]
        .set_faults(FaultConfig {
            close_after_chunks: Some(CUT_AFTER),
            ..FaultConfig::default()
        })
        .unwrap();
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| spawn_stream(&s.client, s.at("/v1/completions"), streamed(TOKENS as u32)))
        .collect();
    let mut endings = Vec::new();
    for st in streams {
        endings.push(ending(&st.await.unwrap()));
    }
    // Round robin: exactly a third of the streams went to the crashing engine.
    let whole = endings.iter().filter(|e| **e == Ending::Whole).count();
    let cut = endings.iter().filter(|e| **e == Ending::Cut).count();
    let errored: Vec<usize> = endings
        .iter()
        .filter_map(|e| match e {
            Ending::Error { tokens } => Some(*tokens),
            _ => None,
        })
        .collect();
    assert_eq!(whole, STREAMS * 2 / 3, "{endings:?}");
    assert_eq!(errored.len() + cut, STREAMS / 3, "{endings:?}");
    // The engine cuts after its third event: no client got more than that.
    assert!(
        errored.iter().all(|&t| t <= CUT_AFTER as usize),
        "{errored:?}"
    );

    eprintln!(
        "crash: {whole} whole streams, {} ended with an error event, {cut} cut",
        errored.len()
    );
    // The router's accounting agrees, per engine.
    let bad = s.id_of(0).await;
    let health = s.health().await;
    assert_eq!(health["broken_streams"], STREAMS / 3, "{health}");
    let text = s.metrics().await;
    let requests = |engine: &str, status: &str| {
        grew(
            &metrics_before,
            &text,
            "llmstack_requests_total",
            &[("engine", engine), ("status", status)],
        )
    };
    assert_eq!(requests(&bad, "broken"), (STREAMS / 3) as f64, "{text}");
    assert_eq!(requests(&bad, "2xx"), 0.0, "{text}");
    let upstream = [("engine", bad.as_str()), ("kind", "broken")];
    assert_eq!(
        grew(
            &metrics_before,
            &text,
            "llmstack_upstream_errors_total",
            &upstream
        ),
        (STREAMS / 3) as f64,
        "{text}"
    );
    for i in 1..3 {
        let good = s.id_of(i).await;
        assert_eq!(requests(&good, "broken"), 0.0, "{text}");
        assert_eq!(requests(&good, "2xx"), (STREAMS / 3) as f64, "{text}");
        assert_eq!(s.served(i).await, (STREAMS / 3) as f64);
    }
    assert_eq!(
        health["retries"], 0,
        "nothing is retried once a stream started"
    );
    s.assert_clean().await;

    // Repaired, the engine streams whole again.
    let before = s.served(0).await;
    s.engines[0].set_faults(FaultConfig::default()).unwrap();
    let streams: Vec<_> = (0..6)
        .map(|_| spawn_stream(&s.client, s.at("/v1/completions"), streamed(TOKENS as u32)))
        .collect();
    for st in streams {
        assert_eq!(ending(&st.await.unwrap()), Ending::Whole);
    }
    assert_eq!(s.served(0).await, before + 2.0);
    s.assert_clean().await;
}
