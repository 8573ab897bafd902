//! DNS discovery against a real resolver: dnsmasq on loopback, serving `*.test` from a
//! hosts directory it re-reads on change, and SRV records given at its start.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use llmstack_core::Update;
use llmstack_discovery::{DnsConfig, UpdateStream, dns_discovery};
use llmstack_test_support::dnsmasq::Dnsmasq;

fn discover(name: &str, dns: &Dnsmasq) -> UpdateStream {
    dns_discovery(DnsConfig {
        name: name.into(),
        port: 8000,
        nameservers: vec![dns.addr()],
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_secs(1),
    })
}

/// The URLs of the next `Reset`, sorted; panics after `within`.
async fn next_reset(stream: &mut UpdateStream, within: Duration) -> Vec<String> {
    let item = tokio::time::timeout(within, poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)))
        .await
        .unwrap_or_else(|_| panic!("no update within {within:?}"));
    match item.expect("the stream does not end").expect("no error") {
        Update::Reset(eps) => {
            let mut urls: Vec<String> = eps.iter().map(|e| e.url.to_string()).collect();
            urls.sort();
            urls
        }
        other => panic!("DNS discovery sends only resets, got {other:?}"),
    }
}

/// Asserts that no update arrives for `period`.
async fn quiet(stream: &mut UpdateStream, period: Duration) {
    let next = tokio::time::timeout(period, poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)));
    if let Ok(update) = next.await {
        panic!("an update while the resolver fails: {update:?}");
    }
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_records_are_added_removed_and_readdressed() {
    let dns = Dnsmasq::start("127.0.0.2 vllm.test\n127.0.0.3 vllm.test\n", &[]);
    let mut stream = discover("vllm.test", &dns);
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.2:8000/", "http://127.0.0.3:8000/"]
    );
    dns.set_hosts("127.0.0.3 vllm.test\n127.0.0.4 vllm.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.3:8000/", "http://127.0.0.4:8000/"]
    );
    // AAAA records count too, in brackets.
    dns.set_hosts("fd00::7 vllm.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://[fd00::7]:8000/"]
    );
    // No records (NXDOMAIN): a valid answer, the set becomes empty.
    dns.set_hosts("");
    assert!(next_reset(&mut stream, SOON).await.is_empty());
}

#[tokio::test]
async fn an_empty_first_answer_is_sent() {
    let dns = Dnsmasq::start("", &[]);
    let mut stream = discover("vllm.test", &dns);
    assert!(next_reset(&mut stream, SOON).await.is_empty());
    dns.set_hosts("127.0.0.2 vllm.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.2:8000/"]
    );
}

#[tokio::test]
async fn srv_records_give_each_target_its_port() {
    let dns = Dnsmasq::start(
        "127.0.0.5 engine-a.test\n127.0.0.6 engine-b.test\n",
        &[
            "_http._tcp.vllm.test,engine-a.test,8001",
            "_http._tcp.vllm.test,engine-b.test,8002",
        ],
    );
    let mut stream = discover("_http._tcp.vllm.test", &dns);
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.5:8001/", "http://127.0.0.6:8002/"]
    );
    // A target re-addressed: found at the next refresh (whether dnsmasq sends the
    // target's address with the SRV answer or it is looked up).
    dns.set_hosts("127.0.0.7 engine-a.test\n127.0.0.6 engine-b.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.6:8002/", "http://127.0.0.7:8001/"]
    );
}

#[tokio::test]
async fn a_failing_resolver_keeps_the_last_endpoints() {
    let mut dns = Dnsmasq::start("127.0.0.2 vllm.test\n", &[]);
    let mut stream = dns_discovery(DnsConfig {
        name: "vllm.test".into(),
        nameservers: vec![dns.addr()],
        // A shorter max_refresh bounds each attempt (hence a silent server) at 500 ms.
        min_refresh: Duration::from_millis(100),
        max_refresh: Duration::from_millis(500),
        ..DnsConfig::default()
    });
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.2:8000/"]
    );

    dns.kill();
    // A silent server: each resolution times out (3 attempts of max_refresh). Several
    // refresh periods later, still no update; in particular no empty set.
    quiet(&mut stream, Duration::from_millis(2500)).await;
    // A server refusing to answer: fast failures, same outcome.
    dns.restart_refusing();
    quiet(&mut stream, Duration::from_millis(1500)).await;

    dns.set_hosts("127.0.0.3 vllm.test\n");
    dns.restart(&[]);
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.3:8000/"]
    );
}
