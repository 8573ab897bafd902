//! Criterion micro-benchmarks of llmstack's hot paths (`cargo bench -p llmstack-benches`):
//! reading a request's routing facts, choosing an engine, parsing an engine's `/metrics`.
//! CI only compiles them (`cargo bench --no-run`); figures go to docs/benchmarks.md.
