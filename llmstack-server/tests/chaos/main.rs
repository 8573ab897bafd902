//! Chaos tests: faults injected into real simulated engines (`llmstack-sim`, over
//! loopback HTTP) behind the real router (`Server::start`), under concurrent load;
//! each test asserts what every client saw and that the router's accounting ends
//! clean.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod bursts;
mod crash;
mod drain;
mod hang;
mod refused;
mod restart;
mod slow_body;
mod support;
