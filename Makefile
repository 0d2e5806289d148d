# The two commands of the README. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
# The venv's tools first, as in an activated venv (DeepSpeed's JIT build takes the first ninja on PATH).
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test venv clean

$(BIN)/hiir: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: 2.13.0 is the local CPU build; any other spec pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# DeepSpeed's CPU all-reduce op, compiled once here rather than by the first trial (~45 s on 2 cores).
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	get_accelerator().create_op_builder('ShareMemCommBuilder').load(verbose=False)"
	touch $(BIN)/hiir

venv: $(BIN)/hiir

demo: venv
	$(BIN)/hiir study run studies/smoke.yaml

test: venv
	# Two pytest processes: the tests that use the session's Ray in one, the rest beside them (tests/conftest.py).
	# pytest exits 5 when it collects no tests; that is not a failure.
	$(BIN)/python -m pytest tests -n 2 --dist loadgroup --durations=25 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

clean:
	rm -rf hiir-work .cache
