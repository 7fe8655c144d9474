# syntax=docker/dockerfile:1.7
# One image for every service and the trainer: /usr/local/bin/automl and automl-train.
#
#   docker build -f services.dockerfile -t automl:latest .
#   docker build -f services.dockerfile --build-arg TRAINER=cuda -t automl:cuda .
#   docker run -p 6000-6003:6000-6003 -p 8080:8080 automl:latest  # all + console, embedded storage
#   docker run automl:latest data-management --config /etc/automl/automl.toml
#
# TRAINER=cuda builds automl-train with candle's CUDA kernels on an NVIDIA CUDA base image (the
# image for GPU trainer Jobs; it needs an R580+ driver where it runs). The services themselves
# are the same CPU build in both variants.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_RELEASE=24.04
ARG TRAINER=cpu

# The Rust toolchain, also copied into the CUDA build image.
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS toolchain

FROM toolchain AS build-env-cpu

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_RELEASE} AS build-env-cuda
# Unpinned on purpose: the compilers follow the base image's release, whose point versions are
# superseded (and removed from the mirrors) with every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH

# Compiles both binaries; the cargo registry and target directory are build caches, so the
# results are copied out to /out. The base is one of the two stages above, not a registry image.
# hadolint ignore=DL3006
FROM build-env-${TRAINER} AS build
ARG TRAINER
# The GPU generation candle's kernels are compiled for (there is no GPU to ask at build time):
# 80 = A100, 89 = L4/L40, 90 = H100.
ARG CUDA_COMPUTE_CAP=80
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY services services
COPY training-code training-code
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p automl --bin automl \
    && if [ "$TRAINER" = cuda ]; then \
         CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP cargo build --release --locked \
           -p automl-text-classification --bin automl-train --features cuda; \
       else \
         cargo build --release --locked -p automl-text-classification --bin automl-train; \
       fi \
    && mkdir -p /out \
    && cp target/release/automl target/release/automl-train /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime-cpu

# The runtime flavour carries the CUDA libraries candle loads (cuBLAS, cuRAND, NVRTC).
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_RELEASE} AS runtime-cuda

# One of the two stages above, chosen by TRAINER.
# hadolint ignore=DL3006
FROM runtime-${TRAINER}
LABEL org.opencontainers.image.title="automl" \
      org.opencontainers.image.description="automl services (automl serve …) and the trainer automl-train" \
      org.opencontainers.image.licenses="Apache-2.0"
# ca-certificates: TLS to S3 endpoints and Kubernetes. Unpinned for the reason given above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 automl \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/automl \
         --shell /usr/sbin/nologin automl \
    && mkdir -p /var/lib/automl/automl-data /var/lib/automl/tokens /etc/automl \
    && chown -R 10001:10001 /var/lib/automl
COPY --from=build /out/automl /out/automl-train /usr/local/bin/
USER 10001:10001
# The data directory is the default relative `automl-data`: /var/lib/automl/automl-data
# (SQLite files, the embedded object store, the model cache, local training logs).
# /var/lib/automl/tokens exists owned by automl so a volume mounted there (docker-compose's
# tokens file) starts writable for `automl token create`.
WORKDIR /var/lib/automl
# The argument is data-management, prediction-service, metadata-store, training-service, web
# (the console, HTTP) or all of them (the default): their ports in that order, then /metrics.
EXPOSE 6000 6001 6002 6003 8080 9464
# Without --addr, `automl health` asks every configured service port on this machine (gRPC
# health) and the console's GET /healthz, and passes when the ones that answer are SERVING,
# whichever service the argument started.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["automl", "health"]
ENTRYPOINT ["automl", "serve"]
CMD ["all"]
