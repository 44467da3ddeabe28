# Quick start: `make demo` (set-up, then the lineage on generated data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

STL_DATA_DIR ?= $(CURDIR)/.stl_data
DAGSTER_HOME ?= $(STL_DATA_DIR)/dagster_home
export STL_DATA_DIR DAGSTER_HOME

.PHONY: install browser postgres engine demo test lint format ui mlflow bench lock clean

install: $(STAMP)

# requirements.lock pins every package `make` installs; pyproject.toml keeps lower bounds only.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/stl-demo

# The gallery test renders pages in Debian's Chromium, the deployment test runs a throwaway
# PostgreSQL server and the container test builds and starts docker/ on a Docker engine
# (started here if none answers, and stopped again); with all three required, a missing one
# fails rather than skips.
test: install lint browser postgres
	docker/engine.sh start
	STL_TEST_REQUIRE_BROWSER=1 STL_TEST_REQUIRE_POSTGRES=1 STL_TEST_REQUIRE_DOCKER=1 \
		$(BIN)/python -m pytest; status=$$?; docker/engine.sh stop; exit $$status

# Debian's chromium, for the browser tests (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Debian's PostgreSQL server binaries, for the deployment test (no cluster is started here).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

# A Docker engine for docker/ on a Debian host: docker.io, Compose v2, buildx, dockerd, and a
# debian:bookworm-slim made with debootstrap where no registry answers (docker/engine.sh).
engine:
	docker/engine.sh start

lint: install
	$(BIN)/ruff check stl_pipeline stl_pipeline_tests benchmarks
	$(BIN)/ruff format --check stl_pipeline stl_pipeline_tests benchmarks

format: install
	$(BIN)/ruff check --fix stl_pipeline stl_pipeline_tests benchmarks
	$(BIN)/ruff format stl_pipeline stl_pipeline_tests benchmarks

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev

# The MLflow UI on the store training runs log to (MLFLOW_TRACKING_URI overrides it).
MLFLOW_TRACKING_URI ?= sqlite:///$(STL_DATA_DIR)/mlflow/mlflow.db
mlflow: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

$(DAGSTER_HOME)/dagster.yaml: | instance/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp -n instance/dagster.yaml $@

bench: install
	$(BIN)/python benchmarks/end_to_end.py --scale 0.1
	$(BIN)/python benchmarks/code_location.py
	$(BIN)/python benchmarks/download.py
	$(BIN)/python benchmarks/full_scale.py
	$(BIN)/python benchmarks/embed.py
	$(BIN)/python benchmarks/partitions.py
	$(BIN)/python benchmarks/personalized.py --scale 0.1
	$(BIN)/python benchmarks/knn.py
	$(BIN)/python benchmarks/recommend.py

# Re-resolve the pins from pyproject.toml in a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
