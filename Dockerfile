# The dreamstream server image.
#
# Production (NVIDIA GPU, the default):
#   docker build -t dreamstream .
# CPU only, on a plain Debian or Ubuntu base:
#   docker build --build-arg BASE=debian:bookworm-slim --build-arg EXTRA=server -t dreamstream:cpu .
# More models exported at build time (weights from the build context, see .dockerignore):
#   docker build --build-arg MODELS="efficientnet-lite0 googlenet-bvlc:weights/bvlc_googlenet.caffemodel" ...
# Where pip must trust a site CA bundle, pass it as a secret (never lands in a layer):
#   docker build --secret id=pipca,src=/etc/ssl/certs/ca-certificates.crt ...
#
# Run: docker run --gpus all -p 50051:50051 -p 9090:9090 dreamstream
# The entrypoint is the `dreamstream` command, so `docker run IMAGE serve --port P ...` or
# `docker run IMAGE models --server HOST:P` work as on a workstation; every serve flag can
# also be set as a DREAMSTREAM_* variable (docker run -e DREAMSTREAM_MAX_QUEUE=8 ...).

# Any Debian or Ubuntu with apt: Python comes from the base's own python3 (3.11 on bookworm,
# 3.12 on Ubuntu 24.04, which the CUDA image is built on).
ARG BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# --- runtime: the base with Python and tini, shared by the final image and the build stages ---
FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# tini is PID 1 in the final image: it forwards SIGTERM to the server and reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# --- python: what building a virtual environment takes besides (venv's pip) ---
FROM runtime AS python
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# --- export: the models, exported with the CPU runtime (the graphs do not depend on the device) ---
FROM python AS export
ARG MODELS=efficientnet-lite0
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pipca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    python3 -m venv /opt/export \
    && /opt/export/bin/pip install --disable-pip-version-check --quiet "/src[server,export]" \
    && for entry in ${MODELS}; do \
        backbone="${entry%%:*}"; weights="${entry#*:}"; \
        if [ "$weights" = "$entry" ]; then set --; else set -- --weights "/src/$weights"; fi; \
        /opt/export/bin/dreamstream export "$backbone" --out /models "$@" || exit 1; \
    done

# --- venv: the server and its runtime only (EXTRA=gpu: onnxruntime-gpu; EXTRA=server: the CPU one) ---
FROM python AS venv
ARG EXTRA=gpu
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pipca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --disable-pip-version-check --quiet "/src[${EXTRA}]" \
    && /opt/venv/bin/pip uninstall --yes --quiet setuptools \
    && /opt/venv/bin/pip uninstall --yes --quiet pip

# --- the image: Python, the venv and the models; no pip, no pip cache, no build context ---
FROM runtime
COPY --from=venv /opt/venv /opt/venv
COPY --from=export /models /models
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --gid 10001 dreamstream \
    && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin dreamstream
USER 10001:10001
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DREAMSTREAM_MODELS=/models
# gRPC, Prometheus metrics, and the HTTP gateway (JSON/SSE API and the web page).
EXPOSE 50051 9090 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "dreamstream"]
# --memory-budget auto (the default, said here): the container's memory limit, read from its cgroup,
# shared out between the dreams, the models' sessions and the server.
CMD ["serve", "--models", "/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090", "--http-port", "8080", "--memory-budget", "auto"]
