//! A third-party routing policy: prefer the engines in our own zone (label
//! `zone=local`) unless they are clearly busier than the remote ones, and let
//! [`LeastLoaded`] decide otherwise, composed with [`PolicyExt::or`].
//!
//! Runs the policy through a [`Router`] on made-up endpoint sets (no network), prints
//! each decision and asserts it: `cargo run -p llmstack-routing --example custom-policy`
//! exits non-zero if the policy misbehaves.

use std::error::Error;

use llmstack_core::{EndpointState, Update};
use llmstack_routing::{
    Candidates, Endpoint, EndpointSet, LeastLoaded, Policy, PolicyExt, RouteRequest, Routed,
    Router, Target,
};

/// The least loaded engine labelled `zone=<zone>`, unless it carries more than `slack`
/// requests more than the least loaded engine elsewhere. Declines (returns `None`) in
/// that case and when no candidate is in the zone, leaving the choice to the fallback.
#[derive(Debug)]
struct PreferZone {
    zone: &'static str,
    slack: f64,
}

impl Policy for PreferZone {
    fn pick(&self, _req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        // The least loaded candidate in (`local`) or out of the zone, with its requests:
        // this router's in flight plus what the last scrape saw from others.
        let least = |local: bool| {
            candidates
                .endpoints()
                .iter()
                .enumerate()
                .filter(|(_, ep)| (zone(ep) == self.zone) == local)
                .map(|(i, _)| (i, candidates.load(i).requests()))
                .min_by(|a, b| a.1.total_cmp(&b.1))
        };
        let (local, local_requests) = least(true)?;
        match least(false) {
            Some((_, remote_requests)) if local_requests > remote_requests + self.slack => None,
            _ => Some(local),
        }
    }

    fn name(&self) -> &'static str {
        "prefer_zone"
    }
}

fn zone(ep: &Endpoint) -> &str {
    ep.labels.get("zone").map_or("-", String::as_str)
}

/// An endpoint set of engines serving `m`: (address, zone, state).
fn snapshot(engines: &[(&str, &str, EndpointState)]) -> Result<EndpointSet, Box<dyn Error>> {
    let mut endpoints = Vec::new();
    for &(url, zone, state) in engines {
        let mut ep = Endpoint::new(url.parse()?)
            .with_model("m")
            .with_state(state);
        ep.labels.insert("zone".into(), zone.into());
        endpoints.push(ep);
    }
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(endpoints));
    Ok(set)
}

/// Routes one request and prints the decision; returns it (its guard keeps the request
/// in flight until dropped).
fn route(router: &Router, set: &EndpointSet, what: &str) -> Result<Routed, Box<dyn Error>> {
    let req = RouteRequest::from_json(br#"{"model":"m","prompt":"Hello"}"#, None)?;
    let routed = router.route(set, None, &req, &Target::default())?;
    let in_flight = router.in_flight().get(&routed.endpoint.id);
    let (url, zone) = (&routed.endpoint.url, zone(&routed.endpoint));
    println!("{what:<28} -> {url} zone={zone:<6} (now {in_flight} in flight there)");
    Ok(routed)
}

fn main() -> Result<(), Box<dyn Error>> {
    use EndpointState::{Ready, Unready};
    let policy = PreferZone {
        zone: "local",
        slack: 2.0,
    }
    .or(LeastLoaded);
    let router = Router::new(policy);
    println!("policy: {}", router.policy_name());

    // Two local engines, two remote ones.
    let pool = snapshot(&[
        ("http://10.0.0.1:8000", "local", Ready),
        ("http://10.0.0.2:8000", "local", Ready),
        ("http://10.9.0.1:8000", "remote", Ready),
        ("http://10.9.0.2:8000", "remote", Ready),
    ])?;

    // Requests held in flight: the locals take them until each carries 3 (more than
    // 0 + 2), then the idle remotes take one each, then the locals again (3 <= 1 + 2).
    let mut held = Vec::new();
    for n in 1..=9 {
        held.push(route(&router, &pool, &format!("held request {n}"))?);
    }
    let zones: Vec<&str> = held.iter().map(|r| zone(&r.endpoint)).collect();
    let expected = [
        "local", "local", "local", "local", "local", "local", "remote", "remote",
    ];
    assert_eq!(zones[..8], expected, "locals until 2 busier, then remote");
    assert_eq!(zones[8], "local", "back to a local within the slack");

    // Once those requests end, the next one is local again.
    drop(held);
    assert_eq!(router.in_flight().total(), 0);
    assert_eq!(zone(&route(&router, &pool, "idle pool")?.endpoint), "local");

    // No local candidate (both failed their probe): the policy declines, LeastLoaded
    // spreads the requests over the remotes.
    let locals_down = snapshot(&[
        ("http://10.0.0.1:8000", "local", Unready),
        ("http://10.0.0.2:8000", "local", Unready),
        ("http://10.9.0.1:8000", "remote", Ready),
        ("http://10.9.0.2:8000", "remote", Ready),
    ])?;
    let a = route(&router, &locals_down, "locals unready")?;
    let b = route(&router, &locals_down, "locals unready")?;
    assert_eq!((zone(&a.endpoint), zone(&b.endpoint)), ("remote", "remote"));
    assert_ne!(a.endpoint.id, b.endpoint.id, "the fallback balances");
    drop((a, b));

    // Only local engines: nothing to compare with, so local however busy.
    let local_only = snapshot(&[("http://10.0.0.1:8000", "local", Ready)])?;
    let held: Vec<Routed> = (1..=4)
        .map(|n| route(&router, &local_only, &format!("local only, request {n}")))
        .collect::<Result<_, _>>()?;
    assert!(held.iter().all(|r| zone(&r.endpoint) == "local"));
    drop(held);

    assert_eq!(router.in_flight().total(), 0);
    println!("all decisions as expected");
    Ok(())
}
