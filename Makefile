# peerload developer commands. `make demo` and `make test` are the README's two set-up commands.
PY ?= python3
VENV := .venv
VENV_VLLM := .venv-vllm
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV_VLLM)/.installed
# The official ModelExpress client is a test oracle; its own dependency set is heavy, so it is
# installed without deps next to the few it needs at import time (see shared DESIGN.md).
MX_DEPS := zstandard huggingface_hub google-crc32c boto3
# The exact releases of our machines (CPU torch, NIXL's cu12 build); pyproject.toml has ranges.
CONSTRAINTS := constraints/ci.txt

.PHONY: install system-deps demo lint format test test-fast bench chaos proto vllm-venv clean gpu-check

install: $(STAMP)

system-deps:
	@bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml $(CONSTRAINTS) scripts/install_system_deps.sh
	@bash scripts/install_system_deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/pip install -q -c $(CONSTRAINTS) $(MX_DEPS)
	$(BIN)/pip install -q --no-deps modelexpress==0.7.0
	touch $(STAMP)

# A separate venv for real vLLM on CPU (its pins differ from ours); built once, reused.
vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml $(CONSTRAINTS) scripts/build_vllm_venv.sh
	bash scripts/build_vllm_venv.sh $(VENV_VLLM)
	touch $(VLLM_STAMP)

demo: install
	$(BIN)/peerload demo

# The quality gate CI runs before the tests: style, formatting, stale stubs, the public API's
# exports, the architecture's floors (no upward imports, no cycles; see pyproject.toml) and types
# (mypy on src/peerload; its settings are in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/python scripts/check_exports.py
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collected nothing: that is a failure here, never a silent pass.
test: install vllm-venv
	$(BIN)/python -m pytest -q -rs; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(BIN)/python -m pytest -q -rs -m "not vllm"

bench: install
	$(BIN)/peerload bench data

# GPU to GPU over NIXL on a CUDA machine, in minutes; prints JSON (docs/testing.md, "GPU check"). It needs
# only a CUDA torch, NIXL (nixl-cu12 or nixl-cu13) and peerload's few pure-Python dependencies,
# so it runs with whatever python3 has them (no venv is built); GPU_CHECK_ARGS="--device cpu" anywhere.
GPU_CHECK_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	PYTHONPATH=src$(if $(PYTHONPATH),:$(PYTHONPATH)) $(GPU_CHECK_PY) scripts/gpu_check.py --json gpu-check.json $(GPU_CHECK_ARGS)

# The fault campaign (about 12 minutes): figures into docs/chaos.json and docs/reliability.md.
chaos: install
	$(BIN)/peerload chaos --out docs/chaos.json --markdown docs/reliability.md

proto: install
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) $(VENV_VLLM) build src/*.egg-info .pytest_cache
