# syntax=docker/dockerfile:1.7
#
# Inference server image: `kmeans-serve` (the server alone, on uvicorn)
# exposing the Open Inference Protocol v2 REST API, KServe v1 :predict and
# /metrics on 8080. Used by the KServe InferenceService
# (k8s/base/inferenceservice.yaml), which runs it with a read-only root filesystem
# as uid 10001.
#
# Only the project's `serving` extra is installed (the light core, MLflow,
# Feast, uvicorn, orjson): no Airflow, Spark, JVM, Great Expectations or
# Evidently, and no compilers in the final stage. The model is not baked in:
# the server loads it from the MLflow registry at start-up
# (`kmeans-serve --alias`), so one image serves every model version.
#
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t kmeans-platform/serving:<tag> .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for dependencies without a wheel for this platform; they stay
# in this stage. Pinned to bookworm's release series (see pipeline.Dockerfile).
RUN apt-get update \
 && apt-get install -y --no-install-recommends 'build-essential=12.9*' \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The serving extra's dependencies only, first, in a layer that only the declarations feed (a
# change of the code reuses it), resolved strictly within the lock file's pins.
COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python project_deps.py serving > requirements.txt \
 && pip install -c requirements.lock -r requirements.txt
# Then the code, without dependencies; `pip check` fails the build if the layer above missed one.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && pip check

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

# Nothing from apt: the numpy wheel bundles its own BLAS, and the server needs
# no JVM.
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

# Fail the build, not the rollout, if the entry point is broken or if a
# platform-only package slipped into the image.
RUN kmeans-serve --help >/dev/null \
 && python -c "import importlib.util as u, sys; found = [m for m in ('airflow', 'pyspark', 'great_expectations', 'evidently') if u.find_spec(m)]; sys.exit(f'platform packages in the serving image: {found}' if found else 0)"

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

# The same command and arguments as the InferenceService's container; the
# integration test tests/integration/server/test_serving_standalone.py runs this entry point
# (with the platform-only packages made unimportable) and checks it.
ENTRYPOINT ["kmeans-serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
