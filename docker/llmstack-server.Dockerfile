# syntax=docker/dockerfile:1
# llmstack-server: the router, with Kubernetes discovery (feature `kube`).
#
#   docker build -f docker/llmstack-server.Dockerfile -t ghcr.io/llmstack/llmstack-server:0.1.0 .
#
# Reproducible: the toolchain image is pinned to the project's Rust (1.95), the
# dependency graph to Cargo.lock (--locked), the file times to SOURCE_DATE_EPOCH, and the
# build path is fixed (/src), so two builds of one commit give the same binary. Pin the
# two base images by digest (`FROM image@sha256:…`) in a release pipeline; see
# docs/containers.md.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
ARG SOURCE_DATE_EPOCH=0
ENV CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo" \
    CFLAGS="-ffile-prefix-map=/src=. -ffile-prefix-map=/usr/local/cargo=cargo"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llmstack-server --no-default-features --features kube,otel \
 && install -D -m 0755 target/release/llmstack-server /out/llmstack-server

# Runtime: glibc and CA certificates, no shell, no package manager, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/llmstack-server /usr/local/bin/llmstack-server
USER 65532:65532
EXPOSE 8001
ENTRYPOINT ["/usr/local/bin/llmstack-server"]
CMD ["--host", "0.0.0.0", "--port", "8001"]
