# syntax=docker/dockerfile:1
#
# Multi-stage build for app-tier-cmk-exporter.
#
#   docker build --build-arg GIT_REVISION="$(git rev-parse --short HEAD)" \
#     -t app-tier-cmk-exporter:dev .
#
# The runtime image is distroless (glibc, libgcc, CA certificates, no shell)
# and runs as the unprivileged "nonroot" user (uid/gid 65532).

ARG RUST_VERSION=1

########################################################################
# Builder
########################################################################
FROM rust:${RUST_VERSION}-bookworm AS builder

WORKDIR /build

# 1. Dependency layer: compile every dependency against a dummy crate so the
#    layer is reused as long as Cargo.toml / Cargo.lock (and build.rs) do not
#    change. "build.r[s]" copies build.rs only when it exists.
COPY Cargo.toml Cargo.lock build.r[s] ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The real sources. The revision ARG is declared only here so that a new
#    commit does not invalidate the dependency layer above.
COPY . .
ARG GIT_REVISION=unknown
# Bump mtimes so cargo rebuilds the crate instead of reusing the dummy one.
RUN find src -type f -name '*.rs' -exec touch {} + \
    && GIT_REVISION="${GIT_REVISION}" cargo build --release --locked \
    && cp target/release/app-tier-cmk-exporter /app-tier-cmk-exporter

########################################################################
# Runtime
########################################################################
FROM gcr.io/distroless/cc-debian12:nonroot

ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.title="app-tier-cmk-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the App-Tier customer managed KMS key" \
      org.opencontainers.image.source="https://github.com/app-tier-cmk-exporter/app-tier-cmk-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_REVISION}"

COPY --from=builder /app-tier-cmk-exporter /app-tier-cmk-exporter

# 65532 is the "nonroot" user of the distroless image.
USER 65532:65532
EXPOSE 10711

ENTRYPOINT ["/app-tier-cmk-exporter"]
