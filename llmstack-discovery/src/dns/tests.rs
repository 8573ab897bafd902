//! Tests of DNS answers turned into endpoints and refresh delays.

use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV};

use super::*;

fn name(s: &str) -> Name {
    Name::from_utf8(s).unwrap()
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn config() -> DnsConfig {
    DnsConfig {
        min_refresh: Duration::from_secs(1),
        max_refresh: Duration::from_secs(30),
        ..DnsConfig::default()
    }
}

fn urls(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints.iter().map(|e| e.url.to_string()).collect()
}

#[test]
fn addresses_become_endpoints_at_the_shortest_ttl() {
    let mut answer = Answer::default();
    let records = [
        record("vllm.test.", 60, RData::CNAME(CNAME(name("pods.test.")))),
        record("pods.test.", 20, RData::A(A::new(10, 0, 0, 2))),
        record("pods.test.", 40, RData::A(A::new(10, 0, 0, 1))),
        // A duplicate address is one endpoint.
        record("pods.test.", 40, RData::A(A::new(10, 0, 0, 1))),
    ];
    answer.add(&records, 8000);
    answer.add(
        &[record(
            "pods.test.",
            90,
            RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        )],
        8000,
    );
    let (endpoints, delay) = answer.snapshot(&config());
    assert_eq!(
        urls(&endpoints),
        [
            "http://10.0.0.1:8000/",
            "http://10.0.0.2:8000/",
            "http://[fd00::1]:8000/"
        ]
    );
    assert_eq!(delay, Duration::from_secs(20));
    // Ids come from the URL: the same address is the same endpoint everywhere.
    let same: http::Uri = "http://10.0.0.1:8000".parse().unwrap();
    assert_eq!(endpoints[0].id, Endpoint::new(same).id);
}

#[test]
fn the_refresh_is_clamped_and_an_empty_answer_is_asked_again_soon() {
    let config = config();
    let at = |ttl: u32| {
        let mut answer = Answer::default();
        answer.add(&[record("a.test.", ttl, RData::A(A::new(10, 0, 0, 1)))], 80);
        answer.snapshot(&config).1
    };
    assert_eq!(at(0), config.min_refresh);
    assert_eq!(at(86_400), config.max_refresh);
    let (endpoints, delay) = Answer::default().snapshot(&config);
    assert!(endpoints.is_empty());
    assert_eq!(delay, config.min_refresh);
}

#[test]
fn srv_records_give_targets_and_ports() {
    let srv = |port, target: &str| {
        let data = RData::SRV(SRV::new(0, 0, port, name(target)));
        record("_http._tcp.vllm.test.", 5, data)
    };
    let records = [srv(8001, "a.test."), srv(8002, "b.test."), srv(0, ".")];
    assert_eq!(
        srv_targets(&records),
        [(name("a.test."), 8001), (name("b.test."), 8002)]
    );
    let mut answer = Answer::default();
    answer.add(&records, 0);
    answer.add(
        &[record("a.test.", 30, RData::A(A::new(10, 0, 0, 1)))],
        8001,
    );
    let (endpoints, delay) = answer.snapshot(&config());
    assert_eq!(urls(&endpoints), ["http://10.0.0.1:8001/"]);
    assert_eq!(delay, Duration::from_secs(5));
}

#[test]
fn srv_names_parse() {
    assert!(Name::from_utf8("_http._tcp.vllm.default.svc.cluster.local").is_ok());
}
