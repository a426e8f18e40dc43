# syntax=docker/dockerfile:1.7
#
# Spark + pipeline image: runs `kmeans train ...` locally or against a k8s://
# master, and is the driver/executor image of the SparkApplication
# (k8s/sparkapplication.yaml). Spark 4.3 comes from the pyspark wheel pinned
# in requirements.lock; no separate Spark distribution is downloaded.
#
# Build from the repository root (context must be the root):
#   docker build -f docker/pipeline.Dockerfile -t kmeans-platform/pipeline:<tag> .

# bookworm, not the floating `3.11-slim`: Debian trixie no longer ships
# OpenJDK 17, which Spark 4 on this platform is pinned to.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for dependencies without a wheel for this platform; they
# stay in this stage. Debian packages are pinned to a release series, not to a
# point version (see the runtime stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends 'build-essential=12.9*' \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependencies first, in a layer that only the declarations feed: a change of the code
# reuses it. Resolved strictly within the lock file's pins (docker/project_deps.py lists what
# pyproject.toml declares for the extra).
COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python project_deps.py platform > requirements.txt \
 && pip install -c requirements.lock -r requirements.txt
# Then the code, without dependencies; `pip check` fails the build if the layer above missed one.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && pip check

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

# openjdk-17-jre-headless  Spark's JVM.
# libopenblas0-pthread     system BLAS/LAPACK (libblas.so.3): used by anything
#                          linked against the system BLAS, including Spark
#                          MLlib's native path; numpy wheels bring their own.
# tini                     PID 1: forwards SIGTERM to the JVM/Python, reaps zombies.
# procps                   `ps`, used by Spark's scripts and for debugging.
# /opt/java                architecture-independent JAVA_HOME (amd64/arm64 paths differ).
# (man1 must exist: the JRE's postinst registers man-page alternatives and
# slim images ship without /usr/share/man.)
# Versions are pinned to the bookworm release series (apt's `pkg=version*`
# prefix match), not to a point version: a point version vanishes from the
# mirror with the next security update and the build would break, while the
# series still takes that update. A base image from another Debian release, or
# a package moving to a new upstream series, fails the build here instead of
# changing the image silently.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      'openjdk-17-jre-headless=17.0.*' \
      'libopenblas0-pthread=0.3.21*' \
      'tini=0.19.*' \
      'procps=2:4.0.2*' \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

# Fixed non-root uid/gid: the manifests set runAsUser/runAsGroup 10001.
RUN groupadd --gid 10001 kmeans \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kmeans \
      --shell /usr/sbin/nologin kmeans

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    JAVA_HOME=/opt/java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY --chmod=0755 docker/spark-entrypoint.sh /usr/local/bin/spark-entrypoint
# Feast declarations (entities, views, feature service customer_segments_v1)
# are applied from a folder, not from the installed package.
COPY feature_repo/ /opt/kmeans/feature_repo/

# Image defaults; the manifests override KMEANS_HOME with the shared volume.
ENV KMEANS_FEAST_REPO=/opt/kmeans/feature_repo \
    KMEANS_HOME=/home/kmeans/.kmeans

# - Spark's launcher scripts must be executable (pip does not always keep the
#   mode bits of package data).
# - The Kubernetes scheduler backend must be in the wheel's jars, otherwise
#   executors cannot start; fail the build rather than the first training run.
# - /opt/kmeans/pipeline -> the installed package, so the SparkApplication's
#   mainApplicationFile local:///opt/kmeans/pipeline/spark_entry.py resolves
#   regardless of the site-packages path. find_spec does not import the
#   package, so this needs no runtime configuration.
# - /var/data/spark-local is spark.local.dir; in pods an emptyDir is mounted
#   over it, outside pods it must still be writable by the kmeans user.
RUN chmod 0755 "${SPARK_HOME}"/bin/* \
 && ls "${SPARK_HOME}"/jars/spark-kubernetes_*.jar >/dev/null \
 && mkdir -p /opt/kmeans /var/data/spark-local \
 && ln -s "$(python -c 'import importlib.util as u; print(u.find_spec("pipeline").submodule_search_locations[0])')" /opt/kmeans/pipeline \
 && test -f /opt/kmeans/pipeline/spark_entry.py \
 && chown kmeans:kmeans /var/data/spark-local \
 && kmeans --help >/dev/null

USER 10001:10001
WORKDIR /home/kmeans

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="kmeans-platform/pipeline" \
      org.opencontainers.image.revision="${GIT_SHA}"

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/spark-entrypoint"]
CMD ["kmeans", "--help"]
