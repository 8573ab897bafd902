//! DNS discovery: a name's A/AAAA or SRV records, re-resolved at their TTL.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use llmstack_core::{BoxError, Endpoint, Update};
use tokio::sync::mpsc;

use crate::{DnsConfig, UpdateStream};

/// Resolves `config.name` now and again at each answer's TTL, yielding a `Reset` of one
/// endpoint (`http://ip:port`, [`Pending`](llmstack_core::EndpointState::Pending)) per
/// distinct address.
///
/// - **Records.** A name starting with `_` is looked up as SRV records: each target's
///   A/AAAA records (from the answer's additional section, else looked up) at the SRV
///   port; priority and weight are ignored (every target is an engine). Any other name
///   is looked up as A and AAAA records, at `config.port`.
/// - **Servers.** `config.nameservers` over UDP and TCP, without search domains or
///   `/etc/hosts`; when empty, the system's configuration (`/etc/resolv.conf`, its
///   search domains and `/etc/hosts`).
/// - **Updates.** The first answer is always sent, even an empty one, so the consumer
///   knows discovery has answered; after that a `Reset` is sent only when the set
///   changed. Endpoint ids come from the URL: an engine at a new address is a new
///   endpoint, and the old one disappears.
/// - **Refresh.** The next resolution comes after the answer's shortest TTL clamped to
///   `[min_refresh, max_refresh]` (`min_refresh` after an empty answer). Hickory's cache
///   is cleared before each resolution, so every refresh asks the servers.
/// - **Empty vs. failed.** NXDOMAIN or no records is an answer: the set becomes empty
///   (a headless Service with no ready pods). A failure (timeout, SERVFAIL, refused)
///   keeps the last set, is logged at warn, counted in
///   `llmstack_discovery_errors_total{source="dns"}`, and retried after `min_refresh`,
///   doubling up to `max_refresh` while it keeps failing. One attempt waits at most
///   `max_refresh` (and the resolver's own timeout, 5 s by default); the resolver
///   makes 3 attempts by default before a lookup fails.
///
/// The stream yields a single `Err` and ends (a fatal condition for the consumer) only
/// when the name does not parse or the system resolver configuration cannot be read.
/// Must be called within a tokio runtime; dropping the stream stops the resolutions.
pub fn dns_discovery(config: DnsConfig) -> UpdateStream {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(run(config, tx));
    UpdateStream::new(rx, Some(task))
}

/// What one resolution found: engine addresses, and the shortest TTL (seconds) of the
/// records that led to them (`None`: no records at all).
#[derive(Debug, Default, PartialEq)]
struct Answer {
    addrs: BTreeSet<SocketAddr>,
    ttl: Option<u32>,
}

async fn run(config: DnsConfig, tx: mpsc::Sender<Result<Update, BoxError>>) {
    let setup = Name::from_utf8(config.name.trim())
        .map_err(NetError::from)
        .and_then(|name| Ok((name, resolver(&config)?)));
    let (name, resolver) = match setup {
        Ok(setup) => setup,
        Err(e) => {
            let e = format!("DNS discovery of `{}` cannot start: {e}", config.name);
            // Ending the stream after the error tells the consumer it is fatal; if it is
            // gone already there is no one to tell.
            if tx.send(Err(e.into())).await.is_err() {
                tracing::debug!("DNS discovery stopped before it started");
            }
            return;
        }
    };
    let mut last: Option<Vec<Endpoint>> = None;
    let mut backoff = config.min_refresh;
    loop {
        let delay = match resolve(&resolver, &name, config.port).await {
            Ok(answer) => {
                backoff = config.min_refresh;
                let (endpoints, delay) = answer.snapshot(&config);
                if last.as_ref() != Some(&endpoints) {
                    tracing::info!(name = %name, endpoints = endpoints.len(), "DNS endpoints changed");
                    last = Some(endpoints.clone());
                    if tx.send(Ok(Update::Reset(endpoints))).await.is_err() {
                        return;
                    }
                }
                delay
            }
            Err(e) => {
                metrics::counter!("llmstack_discovery_errors_total", "source" => "dns")
                    .increment(1);
                tracing::warn!(
                    name = %name,
                    error = %e,
                    retry_in = ?backoff,
                    kept = last.as_ref().map_or(0, Vec::len),
                    "DNS resolution failed; keeping the last endpoints"
                );
                let delay = backoff;
                backoff = (backoff * 2).min(config.max_refresh);
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// A resolver asking `config.nameservers`, or the system's when there are none.
///
/// One attempt waits at most `max_refresh` (hickory's default is 5 s): an answer later
/// than that is older than the refresh it was for, and a silent server is then counted
/// as failing at the pace of the refreshes.
fn resolver(config: &DnsConfig) -> Result<TokioResolver, NetError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = config.nameservers.iter().map(|addr| {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = addr.port();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        });
        let servers = ResolverConfig::from_name_servers(servers.collect());
        let mut builder =
            TokioResolver::builder_with_config(servers, TokioRuntimeProvider::default());
        // The configured servers are the whole truth: `/etc/hosts` must not shadow them.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let options = builder.options_mut();
    options.timeout = options.timeout.min(config.max_refresh);
    builder.build()
}

/// One resolution of `name`: SRV for `_` names, else A and AAAA at `port`.
async fn resolve(resolver: &TokioResolver, name: &Name, port: u16) -> Result<Answer, NetError> {
    // Refreshes are timed by the TTL here; an answer cached by hickory (up to the
    // record's TTL, which may exceed `max_refresh`) would hide changes.
    resolver.clear_cache();
    let mut answer = Answer::default();
    if !name
        .iter()
        .next()
        .is_some_and(|label| label.starts_with(b"_"))
    {
        addresses(resolver, name, port, &mut answer).await?;
        return Ok(answer);
    }
    let Some(srv) = found(resolver.lookup(name.clone(), RecordType::SRV).await)? else {
        return Ok(answer);
    };
    // The SRV records only bound the TTL.
    answer.add(srv.answers(), 0);
    for (target, port) in srv_targets(srv.answers()) {
        let glue: Vec<&Record> = srv
            .additionals()
            .iter()
            .filter(|r| r.name.eq_ignore_root(&target) && ip(r).is_some())
            .collect();
        if glue.is_empty() {
            addresses(resolver, &target, port, &mut answer).await?;
        } else {
            answer.add(glue, port);
        }
    }
    Ok(answer)
}

/// Adds the A and AAAA records of `name` at `port` to `answer`. Fails if either lookup
/// failed (a partial answer would drop live engines).
async fn addresses(
    resolver: &TokioResolver,
    name: &Name,
    port: u16,
    answer: &mut Answer,
) -> Result<(), NetError> {
    let (a, aaaa) = tokio::join!(
        resolver.lookup(name.clone(), RecordType::A),
        resolver.lookup(name.clone(), RecordType::AAAA),
    );
    for lookup in [found(a)?, found(aaaa)?].into_iter().flatten() {
        answer.add(lookup.answers(), port);
    }
    Ok(())
}

/// A lookup's result, with a negative answer (NXDOMAIN, or no records of that type) as
/// `None`: an answer, not a failure.
fn found(result: Result<Lookup, NetError>) -> Result<Option<Lookup>, NetError> {
    match result {
        Ok(lookup) => Ok(Some(lookup)),
        Err(e) if e.is_no_records_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The targets and ports of the SRV records among `records`, without the `.` target
/// ("no service here", RFC 2782).
fn srv_targets(records: &[Record]) -> Vec<(Name, u16)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => Some((srv.target.clone(), srv.port)),
            _ => None,
        })
        .collect()
}

/// The address of an A or AAAA record.
fn ip(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(a.0.into()),
        RData::AAAA(aaaa) => Some(aaaa.0.into()),
        _ => None,
    }
}

// === impl Answer ===

impl Answer {
    /// Adds the addresses of the A and AAAA records among `records` at `port`; every
    /// record (SRV and CNAME records on the way included) bounds the TTL.
    fn add<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>, port: u16) {
        for record in records {
            self.ttl = Some(self.ttl.map_or(record.ttl, |ttl| ttl.min(record.ttl)));
            if let Some(ip) = ip(record) {
                self.addrs.insert(SocketAddr::new(ip, port));
            }
        }
    }

    /// The endpoints, ordered by address, and the time until the next resolution: the
    /// shortest TTL clamped to `[min_refresh, max_refresh]`, or `min_refresh` when there
    /// were no records (so the first engine of an empty name is seen soon).
    fn snapshot(&self, config: &DnsConfig) -> (Vec<Endpoint>, Duration) {
        let endpoints = self
            .addrs
            .iter()
            .filter_map(|&addr| crate::url_at(addr))
            .map(Endpoint::new)
            .collect();
        let delay = self.ttl.map_or(config.min_refresh, |ttl| {
            Duration::from_secs(ttl.into()).clamp(config.min_refresh, config.max_refresh)
        });
        (endpoints, delay)
    }
}

#[cfg(test)]
mod tests;
