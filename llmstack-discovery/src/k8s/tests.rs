//! Tests of pods and EndpointSlices as endpoints, and of watcher event sequences.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use llmstack_core::EndpointSet;
use proptest::prelude::*;

use super::*;

/// A pod as the test kubelet would leave it.
#[derive(Debug, Clone)]
struct Spec {
    name: usize,
    uid: usize,
    ip: u8,
    running: bool,
    ready: bool,
    deleting: bool,
    annotated_port: Option<u16>,
}

fn pod(s: &Spec) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("vllm-{}", s.name)),
            namespace: Some("default".into()),
            uid: Some(format!("{:08x}-uid", s.uid * 7919 + s.name)),
            deletion_timestamp: s.deleting.then(|| Time(Default::default())),
            annotations: s
                .annotated_port
                .map(|p| [("llmstack.io/port".to_owned(), p.to_string())].into()),
            labels: Some([("model".to_owned(), "m".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "vllm".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(if s.running { "Running" } else { "Pending" }.into()),
            pod_ip: Some(format!("127.0.0.{}", s.ip)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if s.ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn config() -> K8sConfig {
    K8sConfig::default()
}

#[test]
fn a_pod_is_routable_only_running_ready_and_not_terminating() {
    let base = Spec {
        name: 0,
        uid: 0,
        ip: 2,
        running: true,
        ready: true,
        deleting: false,
        annotated_port: None,
    };
    let ep = pod_endpoint(&pod(&base), &config()).unwrap();
    // The container port named `http` beats --k8s-port.
    assert_eq!(ep.url.to_string(), "http://127.0.0.2:8080/");
    assert!(ep.id.as_str().starts_with("vllm-0."), "{}", ep.id.as_str());
    assert_eq!(ep.labels["model"], "m");
    // The annotation beats the named port; --k8s-port is the last resort.
    let annotated = Spec {
        annotated_port: Some(9000),
        ..base.clone()
    };
    assert_eq!(
        pod_endpoint(&pod(&annotated), &config())
            .unwrap()
            .url
            .port_u16(),
        Some(9000)
    );
    let unnamed = K8sConfig {
        port_name: "other".into(),
        port: 8001,
        ..config()
    };
    assert_eq!(
        pod_endpoint(&pod(&base), &unnamed).unwrap().url.port_u16(),
        Some(8001)
    );
    for not in [
        Spec {
            running: false,
            ..base.clone()
        },
        Spec {
            ready: false,
            ..base.clone()
        },
        Spec {
            deleting: true,
            ..base.clone()
        },
    ] {
        assert!(pod_endpoint(&pod(&not), &config()).is_none(), "{not:?}");
    }
    let mut no_ip = pod(&base);
    no_ip.status.as_mut().unwrap().pod_ip = None;
    assert!(pod_endpoint(&no_ip, &config()).is_none());
    // The id survives a router restart (same pod) and changes for a new pod.
    assert_eq!(pod_endpoint(&pod(&base), &config()).unwrap().id, ep.id);
    let again = Spec { uid: 1, ..base };
    assert_ne!(pod_endpoint(&pod(&again), &config()).unwrap().id, ep.id);
}

#[test]
fn slices_list_ready_endpoints_at_the_named_port() {
    let slice = EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some("vllm-abcde".into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        ports: Some(vec![
            EndpointPort {
                name: Some("metrics".into()),
                port: Some(9090),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: Some("http".into()),
                port: Some(8000),
                ..EndpointPort::default()
            },
        ]),
        endpoints: vec![
            SliceEndpoint {
                addresses: vec!["127.0.0.2".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some("vllm-0".into()),
                    uid: Some("0123456789".into()),
                    ..ObjectReference::default()
                }),
                ..SliceEndpoint::default()
            },
            // Unset readiness means ready.
            SliceEndpoint {
                addresses: vec!["127.0.0.3".into()],
                ..SliceEndpoint::default()
            },
            SliceEndpoint {
                addresses: vec!["127.0.0.4".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(false),
                    ..EndpointConditions::default()
                }),
                ..SliceEndpoint::default()
            },
            SliceEndpoint {
                addresses: vec!["127.0.0.5".into()],
                conditions: Some(EndpointConditions {
                    terminating: Some(true),
                    ..EndpointConditions::default()
                }),
                ..SliceEndpoint::default()
            },
        ],
    };
    let eps = slice_endpoints(&slice, &config());
    let urls: Vec<String> = eps.iter().map(|e| e.url.to_string()).collect();
    assert_eq!(urls, ["http://127.0.0.2:8000/", "http://127.0.0.3:8000/"]);
    assert_eq!(eps[0].id.as_str(), "vllm-0.01234567");
    let mut map = SliceMap::new(config());
    assert_eq!(map.on_event(Event::Init), None);
    assert_eq!(map.on_event(Event::InitApply(slice.clone())), None);
    let Some(Update::Reset(all)) = map.on_event(Event::InitDone) else {
        panic!()
    };
    assert_eq!(all.len(), 2);
    assert_eq!(map.on_event(Event::Apply(slice.clone())), None, "unchanged");
    assert_eq!(
        map.on_event(Event::Delete(slice)),
        Some(Update::Reset(vec![]))
    );
}

/// One step of a watcher: a (re-)list, or one event.
#[derive(Debug, Clone)]
enum Step {
    List(Vec<Spec>),
    Apply(Spec),
    Delete(Spec),
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..4usize,
        0..2usize,
        2..6u8,
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::option::of(9000..9002u16),
    )
        .prop_map(
            |(name, uid, ip, running, ready, deleting, annotated_port)| Spec {
                name,
                uid,
                ip,
                running,
                ready,
                deleting,
                annotated_port,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => prop::collection::vec(spec(), 0..5).prop_map(Step::List),
        4 => spec().prop_map(Step::Apply),
        2 => spec().prop_map(Step::Delete),
    ]
}

proptest! {
    /// Any watcher event sequence ends in exactly the routable pods of the last
    /// list plus the later events, applied through the router's own EndpointSet.
    #[test]
    fn events_end_in_the_final_state(steps in prop::collection::vec(step(), 1..40)) {
        let mut map = PodMap::new(config());
        let mut set = EndpointSet::default();
        // What the apiserver holds, by pod name (a re-list replaces it).
        let mut world: BTreeMap<usize, Spec> = BTreeMap::new();
        for step in steps {
            let mut events = Vec::new();
            match step {
                Step::List(pods) => {
                    world.clear();
                    events.push(Event::Init);
                    for p in pods {
                        world.insert(p.name, p);
                    }
                    events.extend(world.values().map(|p| Event::InitApply(pod(p))));
                    events.push(Event::InitDone);
                }
                Step::Apply(p) => {
                    world.insert(p.name, p.clone());
                    events.push(Event::Apply(pod(&p)));
                }
                Step::Delete(p) => {
                    // Deletes name the object as last seen.
                    let Some(last) = world.remove(&p.name) else { continue };
                    events.push(Event::Delete(pod(&last)));
                }
            }
            for e in events {
                if let Some(update) = map.on_event(e) {
                    set.apply(update);
                }
            }
            let want: BTreeSet<(String, String)> = world
                .values()
                .filter_map(|p| pod_endpoint(&pod(p), &config()))
                .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                .collect();
            let have: BTreeSet<(String, String)> = set
                .iter()
                .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                .collect();
            prop_assert_eq!(&have, &want);
            let mapped: BTreeSet<(String, String)> = map
                .endpoints()
                .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                .collect();
            prop_assert_eq!(mapped, want);
        }
    }
}
