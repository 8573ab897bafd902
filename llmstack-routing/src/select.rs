//! Narrowing the endpoint set to the candidates of one request.

use std::sync::Arc;

use llmstack_core::{Endpoint, EndpointId, EndpointSet, Error, RouteRequest};

use crate::Policy;

/// Constraints on where one request may go, beyond its model.
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    /// Only this endpoint (`?id=` pinning). Only ids of discovered endpoints are ever
    /// honoured; nothing from the client is dialled.
    pub pinned: Option<&'a str>,
    /// Endpoints that already failed this request (retries never go back to them).
    pub exclude: &'a [EndpointId],
}

/// Chooses the endpoint for `req`: the routable endpoints serving its model, minus the
/// excluded ones, restricted to the pinned id if any; then `policy` picks.
///
/// Errors: [`Error::ModelNotFound`] when no endpoint ever served the model (or the
/// request names none), [`Error::NoReadyEndpoint`] when it is known but no candidate is
/// left (none ready, or all excluded), [`Error::UnknownEndpoint`] when the pinned id is
/// unknown or does not serve the model. Cost: one hash lookup, plus a copy of the
/// candidate list only when some are excluded.
pub fn select(
    policy: &(impl Policy + ?Sized),
    set: &EndpointSet,
    req: &RouteRequest<'_>,
    target: &Target<'_>,
) -> Result<Arc<Endpoint>, Error> {
    let Some(model) = req.model() else {
        return Err(Error::bad_request(
            "The request has no `model`.",
            Some("model"),
        ));
    };
    let all = set.candidates(model);
    if let Some(id) = target.pinned {
        let unknown = || Error::UnknownEndpoint { id: id.to_owned() };
        let ep = set.get(id).ok_or_else(unknown)?;
        if !ep.serves(model) {
            return Err(unknown());
        }
        if !ep.is_routable() || target.exclude.contains(&ep.id) {
            return Err(Error::NoReadyEndpoint {
                model: model.to_owned(),
            });
        }
        return Ok(Arc::clone(ep));
    }
    let none_left = || {
        if set.has_seen(model) {
            Error::NoReadyEndpoint {
                model: model.to_owned(),
            }
        } else {
            Error::ModelNotFound {
                model: model.to_owned(),
            }
        }
    };
    let filtered;
    let candidates = if target.exclude.is_empty() {
        all
    } else {
        filtered = all
            .iter()
            .filter(|ep| !target.exclude.contains(&ep.id))
            .cloned()
            .collect::<Vec<_>>();
        &filtered[..]
    };
    if candidates.is_empty() {
        return Err(none_left());
    }
    let pick = policy.pick(req, candidates).ok_or_else(none_left)?;
    candidates.get(pick).cloned().ok_or_else(none_left)
}

#[cfg(test)]
mod tests {
    use llmstack_core::{EndpointState, Update};

    use super::*;
    use crate::RoundRobin;

    fn set() -> EndpointSet {
        let ep = |port: u16, model: &str, state| {
            Endpoint::new(format!("http://127.0.0.1:{port}").parse().unwrap())
                .with_model(model)
                .with_state(state)
        };
        let mut set = EndpointSet::default();
        set.apply(Update::Reset(vec![
            ep(1, "a", EndpointState::Ready),
            ep(2, "a", EndpointState::Ready),
            ep(3, "b", EndpointState::Unready),
        ]));
        set
    }

    fn route(set: &EndpointSet, model: &str, target: &Target<'_>) -> Result<Arc<Endpoint>, Error> {
        let body = format!(r#"{{"model":"{model}"}}"#);
        let req = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        select(&RoundRobin::default(), set, &req, target)
    }

    #[test]
    fn unknown_model_is_404_and_unready_model_is_503() {
        let set = set();
        assert_eq!(
            route(&set, "zzz", &Target::default()).unwrap_err().status(),
            404
        );
        assert_eq!(
            route(&set, "b", &Target::default()).unwrap_err().status(),
            503
        );
        assert!(route(&set, "a", &Target::default()).is_ok());
    }

    #[test]
    fn exclusion_never_returns_a_failed_endpoint() {
        let set = set();
        let first = set.candidates("a")[0].id.clone();
        let exclude = [first.clone()];
        let target = Target {
            exclude: &exclude,
            ..Target::default()
        };
        for _ in 0..4 {
            assert_ne!(route(&set, "a", &target).unwrap().id, first);
        }
        let both: Vec<EndpointId> = set.candidates("a").iter().map(|e| e.id.clone()).collect();
        let target = Target {
            exclude: &both,
            ..Target::default()
        };
        assert_eq!(route(&set, "a", &target).unwrap_err().status(), 503);
    }

    #[test]
    fn pinning_takes_only_discovered_ids_serving_the_model() {
        let set = set();
        let id = set.candidates("a")[1].id.clone();
        let target = Target {
            pinned: Some(id.as_str()),
            ..Target::default()
        };
        for _ in 0..3 {
            assert_eq!(route(&set, "a", &target).unwrap().id, id);
        }
        assert_eq!(route(&set, "b", &target).unwrap_err().status(), 400);
        let target = Target {
            pinned: Some("http://evil.example"),
            ..Target::default()
        };
        assert_eq!(route(&set, "a", &target).unwrap_err().status(), 400);
    }
}
