#!/usr/bin/env bash
# Container entrypoint for the pipeline image (docker/pipeline.Dockerfile).
#
# Spark on Kubernetes starts driver and executor pods with the first argument
# `driver` or `executor` and expects the image to turn that into a
# spark-submit / executor-backend command, the way the official apache/spark
# images do. Spark here comes from the pyspark wheel (SPARK_HOME points into
# site-packages), so this script provides that contract. Any other command
# (`kmeans train ...`, `bash`) is executed unchanged.
#
# tini is PID 1 (see the Dockerfile), so signals and zombie reaping are
# handled before this script execs the real process.
set -euo pipefail

: "${SPARK_HOME:?SPARK_HOME must be set by the image}"
: "${JAVA_HOME:?JAVA_HOME must be set by the image}"

# Classpath: Spark's jars, optional conf dirs, then anything extra the job
# adds (SPARK_EXTRA_CLASSPATH, e.g. hadoop-aws for s3a://).
spark_classpath="${SPARK_HOME}/jars/*"
if [[ -n "${SPARK_CONF_DIR:-}" ]]; then
  spark_classpath="${SPARK_CONF_DIR}:${spark_classpath}"
fi
if [[ -n "${HADOOP_CONF_DIR:-}" ]]; then
  spark_classpath="${HADOOP_CONF_DIR}:${spark_classpath}"
fi
if [[ -n "${SPARK_EXTRA_CLASSPATH:-}" ]]; then
  spark_classpath="${spark_classpath}:${SPARK_EXTRA_CLASSPATH}"
fi
# SPARK-43540: files shipped to the working directory are on the classpath.
spark_classpath="${spark_classpath}:${PWD}"

case "${1:-}" in
  driver)
    shift
    # The submission client already rendered the full spark-submit argument
    # list; the driver runs it in client mode inside this pod.
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client \
      "$@"
    ;;
  executor)
    shift
    # The driver passes JVM options (including the --add-opens flags Spark
    # needs on Java 17) as SPARK_JAVA_OPT_<n> environment variables.
    java_opts=()
    while read -r name; do
      java_opts+=("${!name}")
    done < <(compgen -v SPARK_JAVA_OPT_ | sort -V)
    exec "${JAVA_HOME}/bin/java" \
      "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" \
      -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${spark_classpath}:${SPARK_DIST_CLASSPATH:-}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" \
      --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    ;;
  *)
    exec "$@"
    ;;
esac
