# syntax=docker/dockerfile:1.7
#
# Inference server image: `kmeans serve` (Starlette/uvicorn) exposing the Open
# Inference Protocol v2 REST API, KServe v1 :predict and /metrics on 8080.
# Used by the KServe InferenceService (k8s/inferenceservice.yaml), which runs
# it with a read-only root filesystem as uid 10001.
#
# No JVM and no compilers in the final stage. The model is not baked in: the
# server loads it from the MLflow registry at start-up (`kmeans serve --alias`), so
# one image serves every model version.
#
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t kmeans-platform/serving:<tag> .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
# INSTALL_TARGET lets CI install a lighter extra (e.g. ".[serving]") if the
# project defines one; the lock file pins every dependency either way.
ARG INSTALL_TARGET=.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c requirements.lock "${INSTALL_TARGET}"

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

# Nothing from apt: numpy/scikit-learn wheels bundle their own BLAS, and the
# server needs no JVM.
RUN groupadd --gid 10001 kmeans \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kmeans \
      --shell /usr/sbin/nologin kmeans

COPY --from=builder /opt/venv /opt/venv

# KMEANS_HOME default for `docker run`; the InferenceService points it at
# the /tmp emptyDir because the root filesystem is read-only there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KMEANS_HOME=/home/kmeans/.kmeans

# Fail the build, not the rollout, if the CLI entry point is broken.
RUN kmeans serve --help >/dev/null

USER 10001:10001
WORKDIR /home/kmeans

EXPOSE 8080

# For `docker run` and compose; Kubernetes ignores HEALTHCHECK and uses the
# probes in the InferenceService. Python stdlib only: no curl in the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2)"]

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="kmeans-platform/serving" \
      org.opencontainers.image.revision="${GIT_SHA}"

ENTRYPOINT ["kmeans", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
