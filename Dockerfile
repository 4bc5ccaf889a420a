# syntax=docker/dockerfile:1.7
# modeld image: multi-stage, multi-arch (linux/amd64, linux/arm64).
#   docker build -t modeld .
#   docker run -p 50051:50051 -p 9090:9090 modeld        # serves the bundled example
# Model root: /models. Mount a volume there (or build FROM this image and COPY bundles into it)
# to serve your own; every setting is a MODELD_* variable (`modeld serve --help`).

ARG RUST_VERSION=1.95.0

# ONNX Runtime from the pinned PyPI wheel, sha256-checked by the same script local builds use.
# It runs on the build machine's platform and picks the wheel of the target's.
FROM --platform=$BUILDPLATFORM python:3.11-slim-bookworm AS onnxruntime
ARG TARGETARCH
COPY scripts/fetch-onnxruntime.sh /fetch-onnxruntime.sh
RUN ORT_ARCH="${TARGETARCH}" /fetch-onnxruntime.sh /ort

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources, so that this layer is reused while only
# src/ changes.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY benches benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin modeld \
    && rm -rf src
COPY src src
# The commit the build-info metric names (the build context has no .git); declared here so
# that only this last layer depends on it.
ARG REVISION=unknown
# COPY keeps the sources' old mtimes; touch them so cargo rebuilds over the placeholders.
RUN touch src/main.rs src/lib.rs \
    && MODELD_GIT_COMMIT="${REVISION}" cargo build --release --locked --bin modeld

FROM debian:bookworm-slim
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/modeld/modeld
LABEL org.opencontainers.image.title="modeld" \
      org.opencontainers.image.description="gRPC serving daemon for tabular ONNX model bundles, with hot-swap" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /src/target/release/modeld /usr/local/bin/modeld
COPY --from=onnxruntime /ort/libonnxruntime.so.1.31.1 /opt/onnxruntime/libonnxruntime.so.1.31.1
# The example bundles; a volume mounted at /models replaces them.
COPY models /models

# The container contract; tests/image_contract.rs runs the binary with exactly these settings.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1 \
    MODELD_MODEL_ROOT=/models \
    MODELD_GRPC_ADDR=0.0.0.0:50051 \
    MODELD_ADMIN_ADDR=0.0.0.0:9090 \
    MODELD_HTTP_ADDR=0.0.0.0:8080 \
    MODELD_LOG_FORMAT=json

# gRPC (Predict, BatchPredict, grpc.health.v1, reflection), HTTP/JSON (/v1/tasks/{task}/predict,
# /v1/models/{task}:predict) and admin HTTP (/healthz /readyz /metrics).
EXPOSE 50051 8080 9090
# A numeric non-root user: runAsNonRoot can verify it without an /etc/passwd entry. modeld
# writes nothing to disk, so a read-only root filesystem works.
USER 65532:65532
ENTRYPOINT ["modeld"]
CMD ["serve"]
