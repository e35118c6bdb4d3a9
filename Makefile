# The two commands: `make demo` and `make test` set everything up on a fresh machine
# (Python 3.10+ and a C++ compiler): a .venv, torch, the dependencies, rarekit built from source.
# PYTHON=/path/to/python uses that environment instead of .venv.
VENV ?= .venv
ifdef PYTHON
PY := $(PYTHON)
else
PY := $(VENV)/bin/python
endif
# CUDA kernels are built where a GPU is visible; RAREKIT_CUDA=1/0 forces or skips them.
RAREKIT_CUDA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo auto || echo 0)
export RAREKIT_CUDA
GPU_RESULTS ?= ./gpu-results
PYTEST_ARGS ?=
# Stamps, one set per interpreter: build/.installed-ID once rarekit is built and installed, build/.extra-NAME-ID
# once the packages of its extra NAME (pyproject.toml) are installed too.
STAMP_ID := $(shell echo "$(abspath $(PY))" | cksum | cut -d' ' -f1)
STAMP := build/.installed-$(STAMP_ID)
extra_stamp = build/.extra-$(1)-$(STAMP_ID)
SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

.PHONY: install test demo bench docs gpu-check wheel clean

install: $(STAMP)

# pip's own lines (Collecting/Downloading/Installing) are shown, without progress bars, so a log of
# the set-up says what is being installed; each step first says why.
PIP := -m pip install --progress-bar off

$(VENV)/bin/python:
	@echo "==> creating $(VENV) (a virtual environment for rarekit; PYTHON=/path/to/python reuses one instead)"
	python3 -m venv $(VENV)
	$(VENV)/bin/python $(PIP) --quiet --upgrade pip

# Build isolation would compile against a different torch from the one installed here, so the
# build dependencies go in first and rarekit is installed with --no-build-isolation.
$(STAMP): $(if $(PYTHON),,$(VENV)/bin/python) $(SOURCES)
	@echo "==> installing torch and the build tools rarekit's C++ extension compiles against (a few minutes on a"
	@echo "    fresh environment: PyPI's Linux torch wheel brings ~3.2 GB of CUDA libraries; .venv ends up ~6 GB)"
	$(PY) $(PIP) "torch>=2.4" "setuptools>=77" wheel ninja numpy
	@echo "==> building rarekit from source (C++ kernels$(if $(filter 0,$(RAREKIT_CUDA)),, and CUDA kernels))"
	$(PY) $(PIP) --no-build-isolation -e .
	@mkdir -p build && touch $@
	@echo "==> rarekit installed: $(PY)"

# An extra of the installed rarekit: pip finds rarekit itself satisfied (no rebuild) and installs only the
# packages the extra adds. Each target installs the extra it needs: demo [demo], test and bench [test], docs [docs].
build/.extra-%-$(STAMP_ID): $(STAMP)
	@echo "==> installing the packages of rarekit's [$*] extra (pyproject.toml) that $(PY) lacks"
	$(PY) $(PIP) "rarekit[$*]"
	@$(PY) -c "import importlib.metadata as m, sys; '$*' in (m.metadata('rarekit').get_all('Provides-Extra') or []) \
	    or sys.exit('rarekit has no extra [$*]: its installed metadata predates pyproject.toml; rm $(STAMP) and rerun')"
	@touch $@

test: $(call extra_stamp,test)
	$(PY) -m pytest -q $(PYTEST_ARGS)
	@echo "==> mypy: the type check of rarekit ([tool.mypy] in pyproject.toml)"
	$(PY) -m mypy

demo: $(call extra_stamp,demo)
	@echo "==> rarekit demo: counts a sample text, then trains 6 methods on digits-LT and chatterbot topics"
	$(PY) -m rarekit demo

bench: $(call extra_stamp,test)
	$(PY) -m rarekit bench

# The API reference site (mkdocs.yml: docs/, the README's usage, benchmarks/RESULTS.md and the docstrings) into
# site/, offline. Strict: a warning, such as a broken link or cross-reference, fails the build.
docs: $(call extra_stamp,docs)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

wheel: install
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# On a GPU machine with no network: uses the active Python, installs only rarekit itself.
gpu-check:
	bash benchmarks/gpu_check.sh "$(GPU_RESULTS)"

clean:
	rm -rf build dist rarekit/_C*.so rarekit.egg-info
