# torchrest: `make serve` installs and serves the default model on :8088; `make test` installs and tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned in every install step: an unpinned request pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install install-dev serve test browser lint format image image-cuda image-test bench bench-quick bench-core bench-container bench-grpc bench-web bench-ceiling bench-sharing bench-int8 bench-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar on "$(TORCH)"
	$(BIN)/pip install --progress-bar on "$(TORCH)" -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --progress-bar on "$(TORCH)" -e ".[dev,bench]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

serve: install
	$(BIN)/torchrest serve $(ARGS)

# One worker per core (pytest-xdist), each taking whole modules (their servers are per module), longest first.
test: install-dev browser
	$(BIN)/python -m pytest -n auto --dist loadscope $(PYTEST_ARGS)

# The web page's tests drive Debian's Chromium (installed with apt-get where it is missing; needs root).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The container image (deploy/README.md): CPU, or CUDA (not buildable without PyTorch's CUDA index).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' torchrest/__init__.py)

image:
	deploy/container/setup-podman.sh
	deploy/container/build.sh torchrest:latest -t torchrest:$(VERSION)

image-cuda:
	TORCH_VARIANT=cu128 deploy/container/build.sh torchrest:cuda -t torchrest:$(VERSION)-cuda --build-arg DEVICE=auto

# Builds the image and runs it as KServe would (podman: deploy/container/setup-podman.sh installs it).
image-test: install-dev image
	$(BIN)/python -m pytest -m container -s tests/test_container.py $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check torchrest tests benchmark examples
	$(BIN)/ruff format --check torchrest tests benchmark examples
	$(BIN)/mypy torchrest benchmark examples

# Rewrites what `make lint` checks the style of.
format: install-dev
	$(BIN)/ruff check --fix torchrest tests benchmark examples
	$(BIN)/ruff format torchrest tests benchmark examples

# torchrest (eager and optimized) vs the naive FastAPI baseline vs the offline limit (needs wrk).
bench: install-dev
	$(BIN)/python benchmark/bench.py $(ARGS)

bench-quick: install-dev
	$(BIN)/python benchmark/bench.py --quick $(ARGS)

# Served req/s at 1, 8, 100 connections beside the offline limit (needs wrk: apt-get install wrk).
bench-core: install-dev
	$(BIN)/python benchmark/core.py $(ARGS)

# The pipeline's own ceiling: a near-free model, torchrest vs the naive baseline (ARGS="--base REF" adds a commit).
bench-ceiling: install-dev
	$(BIN)/python benchmark/ceiling.py $(ARGS)

# What an open web page costs: req/s at 100 connections with and without one (needs wrk and chromium).
bench-web: install-dev browser
	$(BIN)/python benchmark/web.py $(ARGS)

# torchrest beside mosec, LitServe, Ray Serve, KServe, BentoML, TorchServe and the naive baseline, each peer
# in its own environment under .peers/ (needs wrk, python3.11, and Java 17 for TorchServe). ARGS="--quick";
# ARGS="--rows detect": the detection row alone (a random-weights detector, with LitServe, mosec, naive).
bench-peers: install-dev
	$(BIN)/python benchmark/peers.py $(ARGS)

# gRPC beside REST /v2 and /classify on one server (3 rounds).
bench-grpc: install-dev
	$(BIN)/python benchmark/grpc_vs_rest.py $(ARGS)

# The image beside the native server: req/s, cold start, memory, image size (needs wrk and `make image`).
bench-container: install-dev
	$(BIN)/python benchmark/container.py $(ARGS)

# Two busy models on one server, with and without the core budget they share (needs wrk).
bench-sharing: install-dev
	$(BIN)/python benchmark/sharing.py $(ARGS)

# Whole-graph INT8 recipes side by side: fidelity against speed (NNCF's when `pip install nncf`).
bench-int8: install-dev
	$(BIN)/python benchmark/int8_recipes.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
