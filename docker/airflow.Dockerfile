# syntax=docker/dockerfile:1.7
#
# Airflow image for the scheduler, API server, DAG processor and the
# KubernetesExecutor task pods: official Airflow 3.3 + the `pipeline` package
# + the DAGs (kmeans_training) + the Kubernetes templates the DAGs use.
#
# It also carries a Java 17 runtime: the `train` task runs the Spark driver
# in-process (client mode against the k8s:// master), and pyspark starts a
# JVM for it. Executors run the pipeline image; build both from the same
# commit so driver and executors agree on pyspark and `pipeline` code.
#
# Build from the repository root:
#   docker build -f docker/airflow.Dockerfile -t kmeans-platform/airflow:<tag> .

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# ---------------------------------------------------------------- builder ---
# Build the project wheel with the exact Python of the final image; the
# source tree never reaches the final stage.
FROM ${AIRFLOW_IMAGE} AS builder
COPY --chown=airflow:0 . /tmp/src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels /tmp/src

# ---------------------------------------------------------------- runtime ---
FROM ${AIRFLOW_IMAGE}

# Java for the in-process Spark driver (see top). The official image is
# Debian bookworm based, which still ships OpenJDK 17. Pinned to the 17.0
# series, not to a point version: point versions leave the mirror with each
# security update (see pipeline.Dockerfile).
USER 0
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends 'openjdk-17-jre-headless=17.0.*' \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java
ENV JAVA_HOME=/opt/java
USER 50000

# The dependencies first, in a layer that only the declarations feed (a change
# of the code reuses it; docker/project_deps.py lists what pyproject.toml
# declares for the extra). Pinning apache-airflow to the base image's own
# version (AIRFLOW_VERSION is set by the official image) stops pip from up- or
# downgrading Airflow to satisfy the project; requirements.lock constrains
# everything else. If the project's pins and Airflow's requirements cannot
# both hold, this step fails at build time instead of producing a scheduler
# that breaks at import.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/deps/pyproject.toml \
    --mount=type=bind,source=requirements.lock,target=/tmp/deps/requirements.lock \
    --mount=type=bind,source=docker/project_deps.py,target=/tmp/deps/project_deps.py \
    python /tmp/deps/project_deps.py --pyproject /tmp/deps/pyproject.toml platform \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir \
      "apache-airflow==${AIRFLOW_VERSION}" \
      -c /tmp/deps/requirements.lock \
      -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the project's wheel, without dependencies (the pipeline image, on the
# same list, runs `pip check`; the official image's own providers are not
# this project's to check).
RUN --mount=type=bind,from=builder,source=/tmp/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/kmeans_platform-*.whl

# DAGs are baked in: image tag == DAG version, no git-sync sidecar needed.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
# Feast declarations, applied by the pipeline's feature tasks.
COPY --chown=airflow:0 feature_repo/ /opt/airflow/feature_repo/

# KubernetesExecutor pod template, the executor template of client-mode
# Spark runs, and the SparkApplication for cluster-mode runs. Shipping them
# in the image keeps them versioned together with the DAG code that uses them.
COPY --chown=airflow:0 k8s/airflow-pod-template.yaml /opt/airflow/pod_templates/kmeans-worker.yaml
COPY --chown=airflow:0 k8s/sparkapplication.yaml /opt/airflow/k8s/sparkapplication.yaml
COPY --chown=airflow:0 k8s/spark-executor-pod-template.yaml /opt/airflow/k8s/spark-executor-pod-template.yaml

# KMEANS_HOME here is only a safe default: task pods mount the shared volume
# and set it to /data/kmeans (k8s/airflow-pod-template.yaml).
ENV AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE=/opt/airflow/pod_templates/kmeans-worker.yaml \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    KMEANS_FEAST_REPO=/opt/airflow/feature_repo \
    KMEANS_HOME=/home/airflow/.kmeans

# Import the package and parse the DAG folder at build time: a DAG import
# error fails CI here rather than showing up as a broken DAG in production.
# (DagBag moved to airflow.dag_processing in Airflow 3.x; accept either.)
RUN python - <<'EOF'
import pipeline  # noqa: F401
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag("/opt/airflow/dags", include_examples=False)
assert not bag.import_errors, bag.import_errors
assert "kmeans_training" in bag.dag_ids, bag.dag_ids
EOF

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="kmeans-platform/airflow" \
      org.opencontainers.image.revision="${GIT_SHA}"

# Numeric, so runAsNonRoot can be verified by the kubelet (airflow = 50000, gid 0).
USER 50000:0
