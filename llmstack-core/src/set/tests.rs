use super::*;

fn ep(port: u16, models: &[&str]) -> Endpoint {
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    models
        .iter()
        .fold(Endpoint::new(url), |ep, m| ep.with_model(*m))
}

#[test]
fn reset_add_remove() {
    let mut set = EndpointSet::default();
    let a = ep(1, &["m"]);
    let b = ep(2, &["m", "n"]);
    assert!(set.apply(Update::Reset(vec![a.clone()])));
    assert!(!set.apply(Update::Reset(vec![a.clone()])), "no change");
    assert!(set.apply(Update::Add(vec![b.clone()])));
    assert_eq!(set.candidates("m").len(), 2);
    assert_eq!(set.candidates("n").len(), 1);
    assert!(set.apply(Update::Remove(vec![b.id.clone()])));
    assert!(set.candidates("n").is_empty());
    assert!(set.has_seen("n"), "seen models are remembered");
    assert!(!set.has_seen("o"));
    assert!(!set.apply(Update::Remove(vec![EndpointId::new("nope")])));
}

#[test]
fn unready_endpoints_are_not_candidates() {
    let mut set = EndpointSet::default();
    let a = ep(1, &["m"]).with_state(EndpointState::Ready);
    let b = ep(2, &["m"]).with_state(EndpointState::Unready);
    set.apply(Update::Reset(vec![a.clone(), b.clone()]));
    assert_eq!(set.candidates("m").len(), 1);
    assert_eq!(set.candidates("m")[0].id, a.id);
    assert_eq!(set.ready_count(), 1);
    // Replacing by id flips the state.
    set.apply(Update::Add(vec![b.with_state(EndpointState::Ready)]));
    assert_eq!(set.candidates("m").len(), 2);
    assert_eq!(set.ready_count(), 2);
}

#[test]
fn a_snapshot_never_changes() {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(vec![ep(1, &["m"])]));
    let snapshot = set.clone();
    set.apply(Update::Reset(vec![]));
    assert_eq!(snapshot.candidates("m").len(), 1);
    assert!(set.candidates("m").is_empty());
}

/// Applying any sequence of updates leaves the same endpoints as applying one `Reset`
/// to the final state (randomised over many sequences).
#[test]
fn any_update_sequence_equals_its_final_reset() {
    let pool: Vec<Endpoint> = (0..6)
        .map(|i| {
            let models: &[&str] = if i % 2 == 0 { &["a"] } else { &["a", "b"] };
            let state = match i % 3 {
                0 => EndpointState::Ready,
                1 => EndpointState::Unready,
                _ => EndpointState::Pending,
            };
            ep(i, models).with_state(state)
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..500 {
        let mut set = EndpointSet::default();
        let mut model: BTreeMap<EndpointId, Endpoint> = BTreeMap::new();
        for _ in 0..rng.usize(1..12) {
            let pick: Vec<Endpoint> = pool.iter().filter(|_| rng.bool()).cloned().collect();
            let update = match rng.u8(0..3) {
                0 => {
                    model = pick.iter().map(|e| (e.id.clone(), e.clone())).collect();
                    Update::Reset(pick)
                }
                1 => {
                    model.extend(pick.iter().map(|e| (e.id.clone(), e.clone())));
                    Update::Add(pick)
                }
                _ => {
                    let ids: Vec<EndpointId> = pick.iter().map(|e| e.id.clone()).collect();
                    for id in &ids {
                        model.remove(id);
                    }
                    Update::Remove(ids)
                }
            };
            set.apply(update);
        }
        let mut fresh = EndpointSet::default();
        fresh.apply(Update::Reset(model.into_values().collect()));
        let ids = |s: &EndpointSet| s.iter().map(|e| (**e).clone()).collect::<Vec<_>>();
        assert_eq!(ids(&set), ids(&fresh));
        for m in ["a", "b"] {
            let c = |s: &EndpointSet| {
                s.candidates(m)
                    .iter()
                    .map(|e| e.id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(c(&set), c(&fresh));
        }
    }
}
