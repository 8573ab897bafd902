# syntax=docker/dockerfile:1
# llmstack-sim: the vLLM engine simulator (the Helm chart's `servingEngineSpec.engine: sim`).
#
#   docker build -f docker/llmstack-sim.Dockerfile -t ghcr.io/llmstack/llmstack-sim:0.1.0 .
#
# Reproducible in the same way as docker/llmstack-server.Dockerfile (pinned toolchain,
# Cargo.lock, SOURCE_DATE_EPOCH, fixed build path); see docs/containers.md.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
ARG SOURCE_DATE_EPOCH=0
ENV CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo" \
    CFLAGS="-ffile-prefix-map=/src=. -ffile-prefix-map=/usr/local/cargo=cargo"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llmstack-sim \
 && install -D -m 0755 target/release/llmstack-sim /out/llmstack-sim

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/llmstack-sim /usr/local/bin/llmstack-sim
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/llmstack-sim"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
