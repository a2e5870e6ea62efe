# ssdlab: the course and its checks. Every target first installs the project when it is missing.
PYTHON ?= python
PROFILE ?= $(or $(SSDLAB_PROFILE),full)
ASSIGNMENTS ?= build/assignments

.PHONY: install tour test test-browser lab pretrained assignments bench

install:
	@$(PYTHON) -c "import importlib.metadata as m; m.version('ssdlab')" 2>/dev/null || \
		$(PYTHON) -m pip install -e ".[dev]"

tour: install  ## run the whole course headless on built-in data (SSDLAB_PROFILE=smoke for a one-minute run)
	SSDLAB_PROFILE=$(PROFILE) $(PYTHON) -m ssdlab tour

test: install  ## every test: ruff, mypy, unit tests, then the notebooks through nbval (smoke profile)
	@$(PYTHON) -m ruff --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "ruff>=0.5"
	@$(PYTHON) -m mypy --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "mypy>=1.10"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	SSDLAB_PROFILE=smoke OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m pytest -q

test-browser: install  ## notebook 03's explorer in JupyterLab + headless Chromium (apt: chromium chromium-driver); screenshots in build/browser/
	$(PYTHON) scripts/browser_test.py

bench: install  ## every benchmark row family: benchmarks/RESULTS.md, pareto.png, latency_params.png (hours; SSDLAB_PROFILE=smoke: about a minute, into build/bench-smoke/)
	SSDLAB_PROFILE=$(PROFILE) $(PYTHON) benchmarks/bench.py

lab: install  ## open the course notebooks in JupyterLab
	$(PYTHON) -m jupyter lab notebooks/

pretrained: install  ## retrain the committed course baselines (ssdlab/checkpoints/, ~30 min each on 2 cores)
	$(PYTHON) -c "from ssdlab.course import make_baselines; print(*make_baselines(), sep='\n')"

assignments: install  ## classroom: nbgrader student versions of notebooks/assignments/ in build/assignments/release/
	@$(PYTHON) -c "import nbgrader" 2>/dev/null || $(PYTHON) -m pip install -e ".[classroom]"
	rm -rf $(ASSIGNMENTS)/source
	for notebook in notebooks/assignments/a[0-9]_*.ipynb; do \
		name=$$(basename $$notebook .ipynb); \
		mkdir -p $(ASSIGNMENTS)/source/$$name && cp $$notebook $(ASSIGNMENTS)/source/$$name/; \
	done
	test -f $(ASSIGNMENTS)/nbgrader_config.py || \
		printf 'c = get_config()  # noqa: F821\nc.CourseDirectory.course_id = "ssdlab"\n' > $(ASSIGNMENTS)/nbgrader_config.py
	# nbgrader runs `alembic` from PATH: the interpreter's own bin folder first, activated or not
	exe=$$($(PYTHON) -c "import sys; print(sys.executable)") && \
		cd $(ASSIGNMENTS) && PATH="$$(dirname "$$exe"):$$PATH" "$$exe" -m nbgrader generate_assignment "*" --force
	@echo "student versions: $(ASSIGNMENTS)/release/ (instructor guide: notebooks/assignments/README.md)"
