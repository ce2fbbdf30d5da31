# The two commands of the README. Each first runs tools/install/install.sh, which installs what is missing
# into the venv (a no-op taking about a second once everything is there).
#
# Another supported stack: PYTHON_BIN=python3.10 TORCH=2.1.2 TORCHVISION=0.16.2 make test   (install.sh says
# which combinations are supported). Each stack gets its own venv unless VENV= says where.
PYTHON_BIN ?=
TORCH ?=
TORCHVISION ?=
VENV ?= $(if $(PYTHON_BIN)$(TORCH),.venv-$(notdir $(or $(PYTHON_BIN),python3.11))-torch$(or $(TORCH),2.14.1),.venv)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers, a test file each at a time (its module fixtures stay in one process), one thread each:
# most tests wait on one Python process (imports, launches, small ops), so two workers on two cores take about
# half the time of one. Files in collection order (--no-loadscope-reorder; xdist would start with the files of
# most tests), which tests/conftest.py makes longest first. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2
# What the oldest supported stack runs beyond the fast tier (`make test-old-stack`, in .ci/run): mmdet's and
# mmseg's own train -> test (single- and multi-scale) -> resume on the toy set, their checkpoints read
# weights-only, and one two-process DDP launch. The one place that selects them.
OLD_STACK_SLOW_TESTS := tests/test_stock_scripts.py::test_stock_mmdet_train_test_and_resume \
  tests/test_stock_scripts.py::test_stock_mmseg_resume_continues_exactly_as_a_straight_run \
  tests/test_stock_scripts.py::test_our_train_resumes_a_stock_training_exactly_as_a_straight_run \
  tests/test_stock_scripts.py::test_stock_mmseg_test_single_and_multi_scale_match_ours \
  tests/test_stock_scripts.py::test_training_checkpoints_load_weights_only \
  tests/test_launch.py::test_dist_train_and_dist_test_with_two_cpu_processes

.PHONY: install demo test test-fast test-old-stack test-old-stack-fast test-old-stack-slow

install:
	@VENV=$(abspath $(VENV)) PYTHON_BIN=$(or $(PYTHON_BIN),python3.11) TORCH=$(TORCH) TORCHVISION=$(TORCHVISION) \
	  bash tools/install/install.sh

demo: install
	$(PY) tools/misc/demo.py

# pytest exits 5 when it collected no test: that is a failure here, said out loud.
define run_pytest
	@$(if $(filter-out 0,$(PYTEST_WORKERS)),OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} )$(PY) -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: FAILED - pytest collected no tests$(if $(1), ($(subst ",,$(1))))" >&2; fi; exit $$rc
endef

test: install
	$(call run_pytest,)

# The fast tier (units, no trainings or launches): a few minutes on 2 cores.
test-fast: install
	$(call run_pytest,-m "not slow")

# Two parts, so that `make -k test-old-stack` (.ci/run) runs the second when the first fails.
test-old-stack: test-old-stack-fast test-old-stack-slow

test-old-stack-fast: install
	$(call run_pytest,-m "not slow")

test-old-stack-slow: install
	$(call run_pytest,$(OLD_STACK_SLOW_TESTS))
