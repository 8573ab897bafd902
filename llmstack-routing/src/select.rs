//! Narrowing the endpoint set to the candidates of one request.

use std::ops::Deref;
use std::sync::Arc;

use llmstack_core::{Endpoint, EndpointId, EndpointSet, Error, RouteRequest};

use crate::{Candidates, Policy};

/// Constraints on where one request may go, beyond its model.
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    /// Only this endpoint (`?id=` pinning). Only ids of discovered endpoints are ever
    /// honoured; nothing from the client is dialled.
    pub pinned: Option<&'a str>,
    /// Endpoints that already failed this request (retries never go back to them).
    pub exclude: &'a [EndpointId],
    /// Endpoints to pass over while another candidate is left (ejected outliers): a
    /// soft exclusion, so a model whose engines are all avoided is still served.
    pub avoid: &'a [EndpointId],
}

/// A request's candidate endpoints: the endpoint set's own list for the model (shared,
/// recognisable by identity) or a filtered copy.
#[derive(Debug, Clone)]
pub enum CandidateList<'s> {
    /// The set's list for the model, unfiltered.
    Shared(&'s Arc<[Arc<Endpoint>]>),
    /// A filtered or pinned list.
    Owned(Vec<Arc<Endpoint>>),
}

impl Deref for CandidateList<'_> {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &[Arc<Endpoint>] {
        match self {
            Self::Shared(list) => list,
            Self::Owned(list) => list,
        }
    }
}

/// The endpoints `req` may go to: the routable endpoints serving its model, minus the
/// excluded ones, minus the avoided ones unless none would be left, restricted to the
/// pinned id if any (pinning ignores `avoid`). Never empty on success.
///
/// Errors: [`Error::ModelNotFound`] when no endpoint ever served the model (or the
/// request names none: 400), [`Error::NoReadyEndpoint`] when it is known but no
/// candidate is left (none ready, or all excluded), [`Error::UnknownEndpoint`] when the
/// pinned id is unknown or does not serve the model. Cost: one hash lookup, plus a copy
/// of the candidate list only when some are excluded or avoided.
pub fn candidates<'s>(
    set: &'s EndpointSet,
    req: &RouteRequest<'_>,
    target: &Target<'_>,
) -> Result<CandidateList<'s>, Error> {
    let Some(model) = req.model() else {
        return Err(Error::bad_request(
            "The request has no `model`.",
            Some("model"),
        ));
    };
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
    if let Some(id) = target.pinned {
        let unknown = || Error::UnknownEndpoint { id: id.to_owned() };
        let ep = set.get(id).ok_or_else(unknown)?;
        if !ep.serves(model) {
            return Err(unknown());
        }
        if !ep.is_routable() || target.exclude.contains(&ep.id) {
            return Err(none_left());
        }
        return Ok(CandidateList::Owned(vec![Arc::clone(ep)]));
    }
    let candidates = match set.candidates_shared(model) {
        None => CandidateList::Owned(Vec::new()),
        Some(all) if target.exclude.is_empty() && target.avoid.is_empty() => {
            CandidateList::Shared(all)
        }
        Some(all) => CandidateList::Owned(
            all.iter()
                .filter(|ep| !target.exclude.contains(&ep.id))
                .cloned()
                .collect(),
        ),
    };
    let candidates = match candidates {
        CandidateList::Owned(list) if !target.avoid.is_empty() => {
            let kept: Vec<Arc<Endpoint>> = list
                .iter()
                .filter(|ep| !target.avoid.contains(&ep.id))
                .cloned()
                .collect();
            CandidateList::Owned(if kept.is_empty() { list } else { kept })
        }
        other => other,
    };
    if candidates.is_empty() {
        return Err(none_left());
    }
    Ok(candidates)
}

/// Chooses the endpoint for `req` with `policy` alone, without load information
/// (every [`Load`](crate::Load) reads as idle): [`candidates`], then
/// [`Policy::pick`]. A policy that declines gives the "none left" error. The
/// [`Router`](crate::Router) is the full version: loads, prefix index, in-flight guard.
pub fn select(
    policy: &(impl Policy + ?Sized),
    set: &EndpointSet,
    req: &RouteRequest<'_>,
    target: &Target<'_>,
) -> Result<Arc<Endpoint>, Error> {
    let list = candidates(set, req, target)?;
    let tokens = u32::try_from(req.prompt_len() / 4).unwrap_or(u32::MAX);
    policy
        .pick(req, &Candidates::new(&list, &[], tokens))
        .and_then(|i| list.get(i).cloned())
        .ok_or_else(|| Error::NoReadyEndpoint {
            model: req.model().unwrap_or_default().to_owned(),
        })
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
    fn avoided_endpoints_are_passed_over_while_another_is_left() {
        let set = set();
        let ids: Vec<EndpointId> = set.candidates("a").iter().map(|e| e.id.clone()).collect();
        let avoid = [ids[0].clone()];
        let target = Target {
            avoid: &avoid,
            ..Target::default()
        };
        for _ in 0..4 {
            assert_ne!(route(&set, "a", &target).unwrap().id, ids[0]);
        }
        // All avoided: still served.
        let target = Target {
            avoid: &ids,
            ..Target::default()
        };
        assert!(route(&set, "a", &target).is_ok());
        // Excluded and avoided: the avoided one serves.
        let exclude = [ids[1].clone()];
        let target = Target {
            exclude: &exclude,
            avoid: &avoid,
            ..Target::default()
        };
        assert_eq!(route(&set, "a", &target).unwrap().id, ids[0]);
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
