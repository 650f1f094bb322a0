# The two commands of the quick start: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
INSTALLED := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test stop clean

install: $(INSTALLED)

# Re-runs only when the pins change; `pip install` of pinned versions is idempotent anyway. Byte-code is
# compiled here, once: left to first use, every process the demo starts at once (Ray's, the replicas')
# would compile the same modules side by side, and Ray's first start alone took a minute. The
# composer's audio renderer (FluidSynth, a GM SoundFont) and the browser of the web page's tests
# (Chromium) come from the system's packages: the scripts install them where they may and say what to
# run where they may not.
$(INSTALLED): pyproject.toml constraints.txt scripts/install_fluidsynth.sh scripts/install_chromium.sh
	bash scripts/install_fluidsynth.sh
	bash scripts/install_chromium.sh
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

stop:
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" RAY_AUTH_MODE=token ray stop

clean: stop
	rm -rf artifacts
