# The two commands of the README. Each first runs tools/install/install.sh, which installs what is missing
# into .venv (a no-op taking about a second once everything is there).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-fast

install:
	@VENV=$(abspath $(VENV)) bash tools/install/install.sh

demo: install
	$(PY) tools/misc/demo.py

# pytest exits 5 when it collected no test: that is a failure here, said out loud.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED - pytest collected no tests" >&2; fi; exit $$rc

# The fast tier (units, no trainings or launches): a few minutes on 2 cores.
test-fast: install
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: FAILED - pytest collected no tests" >&2; fi; exit $$rc
