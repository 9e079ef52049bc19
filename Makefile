# tunelab: `make webui` opens the studio on the embedded CPU demo model; `make test` runs the tests.
# Both create or update the virtual environment in $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tunelab-installed

.PHONY: venv webui test test-all demo screenshots clean

venv: $(STAMP)

# torch is installed first and pinned (constraints-cpu.txt) so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt torch==2.13.0
	$(PIP) install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

# The studio on http://127.0.0.1:7860, its Train form filled with the demo LoRA example (CPU, about a minute).
webui: $(STAMP)
	$(VENV)/bin/tunelab webui --config examples/demo_cpu_lora_sft.yaml

# Re-take the README screenshots (docs/screenshots/*.png) with the browser test.
screenshots: $(STAMP)
	TUNELAB_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/webui/test_browser.py

demo: $(STAMP)
	$(VENV)/bin/tunelab demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build dist
