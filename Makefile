# make demo: set everything up and run the main job; make test: set everything up and run the tests;
# make reproduce: the Fashion-MNIST reproduction of RAMP's claims (about 95 minutes on 2 cores; resumable) -> docs/RESULTS.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: setup data demo reproduce reproduce-paper test test-fast bench docs lint clean-demo

# the versions come from constraints.txt (the tested set); pyproject.toml declares the ranges.
# robustbench 1.1.1 goes in without its pins (timm==1.0.9, gdown==5.1.0); the robustbench extra brings what it
# imports (docs/guide/checkpoints.md, "RobustBench models")
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,robustbench,docs]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps robustbench
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST: Debian's package when we can install it; otherwise ramptool falls back to torchvision's download.
# Chromium (Debian's): the headless browser that tests `ramptool benchmark`'s leaderboard.html.
data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	    || echo "could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"; \
	  else echo "not root: torchvision will download Fashion-MNIST"; fi; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) \
	    || echo "could not install chromium; the leaderboard page's browser test will be skipped"; \
	  else echo "not root: install chromium for the leaderboard page's browser test (skipped without it)"; fi; \
	fi

demo: setup data
	$(PY) -m ramptool.workflows.demo

# one process per core, data-parallel through torchrun (the plan is sized for 2 cores: about 90 minutes)
REPRODUCE_PROCS ?= $(shell nproc)
reproduce: setup data
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node $(REPRODUCE_PROCS) -m reproduce

# the paper's budget: 1,173 steps per fine-tune, learning curves (about 8 hours on 2 cores; resumable, and it
# continues from the results saved in docs/evidence/reproduce-paper, which it keeps up to date)
reproduce-paper: setup data
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node $(REPRODUCE_PROCS) -m reproduce --paper --evidence docs/evidence/reproduce-paper

test: setup data
	$(PY) -m pytest -q

test-fast: setup data
	$(PY) -m pytest -q -m "not slow"

bench: setup data
	$(PY) bench/attacks.py
	$(PY) bench/train.py
	$(PY) bench/eval.py

# the documentation site (mkdocs.yml; docs/hooks.py renders the CLI reference from the typer app) -> site/
docs: setup
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(VENV)/bin/mkdocs build --strict -d site

lint: setup
	$(VENV)/bin/ruff check ramptool tests bench plugins reproduce examples
