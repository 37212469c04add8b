# syntax=docker/dockerfile:1
# The one capwin image: both providers' Deployments run it (`/manager manager --controllers=...`).
#   docker build -t ghcr.io/capwin/capwin:dev .
# The test kit (`capwin sandbox`, `capwin bench`: cargo feature `kit`, on by default for
# `cargo run`) is left out of the image: --no-default-features.
# Build stage: the workspace's own toolchain floor is 1.94 (Cargo.toml rust-version); 1.95 is what
# the project is developed with. Cache mounts keep the registry and target/ between builds.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p capwin --locked --no-default-features \
 && install -D -m 0755 target/release/capwin /out/manager

# Runtime: glibc + libgcc + CA certificates, no shell, uid/gid 65532 (matches the Deployments'
# runAsUser/runAsGroup). Built on bookworm, so the glibc matches debian12.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
