# Set-up and entry points. Everything lands in .venv/ at the repo root; `make setup` is idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
export SGLANG_USE_CPU_ENGINE ?= $(shell $(PY) -c "import torch,sys; sys.stdout.write('0' if torch.cuda.is_available() else '1')" 2>/dev/null || echo 1)

.PHONY: setup demo test test-fast wheel-check clean-venv

setup:
	@bash patches/cpu-compat/install.sh $(VENV) $(CURDIR)

demo: setup
	$(VENV)/bin/sglang-fair demo

test: setup
	$(PY) -m pytest -q -rs test

test-fast: setup
	$(PY) -m pytest -q -m "not live" test

# the base install without SGLang: wheel <= 5 MB, fresh venv, `capacity` from an unrelated folder
wheel-check:
	bash test/wheel_check.sh

clean-venv:
	rm -rf $(VENV)
