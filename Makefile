# Set-up and entry points. Everything lands in .venv/ at the repo root; `make setup` is idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
# smg (the router line after sglang-router) gets its own venv: sglang-router 0.3.2 also installs a script named `smg`
SMG_VENV ?= .venv-smg
SMG_VERSION ?= 1.13.0
export SGLANG_USE_CPU_ENGINE ?= $(shell $(PY) -c "import torch,sys; sys.stdout.write('0' if torch.cuda.is_available() else '1')" 2>/dev/null || echo 1)

.PHONY: setup setup-smg demo test test-fast wheel-check clean-venv

setup:
	@bash patches/cpu-compat/install.sh $(VENV) $(CURDIR)
	@$(MAKE) --no-print-directory setup-smg || echo "warning: smg==$(SMG_VERSION) not installed; its live tests will skip"

# idempotent; live.server.smg_python() finds .venv-smg/ (another SMG_VENV: set SGLANG_FAIR_SMG_PYTHON)
setup-smg:
	@[ -f $(SMG_VENV)/.smg-$(SMG_VERSION)-stamp ] || { [ -x $(SMG_VENV)/bin/python ] || python3 -m venv $(SMG_VENV); \
	  $(SMG_VENV)/bin/python -m pip install -q --disable-pip-version-check smg==$(SMG_VERSION) && \
	  $(SMG_VENV)/bin/python -m smg.launch_router --help >/dev/null && touch $(SMG_VENV)/.smg-$(SMG_VERSION)-stamp; }

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
	rm -rf $(VENV) $(SMG_VENV)
