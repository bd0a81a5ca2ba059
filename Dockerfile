# The model service image: one static binary and the model folders, nothing else.
#
# Built by `cargo xtask build`, which first builds the binary statically
# (`-C target-feature=+crt-static`, target x86_64-unknown-linux-gnu) and passes its path as
# BINARY. No base image is pulled, so the build works offline.
FROM scratch

ARG BINARY=target/x86_64-unknown-linux-gnu/release/ml-service
ARG VERSION=dev
ARG REVISION=unknown

LABEL org.opencontainers.image.title="ml-service" \
      org.opencontainers.image.description="Iris model service: predictions over HTTP and gRPC, blue-green deployable" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY ${BINARY} /ml-service
COPY models/ /models/

# A numeric non-root user: scratch has no /etc/passwd to name one.
USER 65532:65532

ENV HOST=0.0.0.0 \
    PORT=8080 \
    GRPC_PORT=50051 \
    MODEL_VERSION=v1.0.0 \
    MODEL_PATH=/models/v1.0.0

# HTTP (the API, /health, /metrics) and gRPC (PredictionService, the inference protocol,
# grpc.health.v1, reflection).
EXPOSE 8080 50051

# No shell or curl in the image: the binary checks its own /health, over HTTP.
HEALTHCHECK --interval=2s --timeout=2s --start-period=2s --retries=3 \
    CMD ["/ml-service", "healthcheck"]

ENTRYPOINT ["/ml-service"]
