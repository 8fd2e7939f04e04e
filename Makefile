# On a fresh machine (each target sets up .venv first):
#   make demo        runs the main job on the embedded default (digits preset)
#   make test        runs the whole test suite (what CI runs)
#   make test-fast   runs the tests not marked slow: no Ray, no model training (minutes on 2 cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.raymem-installed
DEMO_STORAGE ?= runs
DEMO_TRIALS  ?= 64

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/raymem run digits --trials $(DEMO_TRIALS) --flip-labels 0.02 --name demo --storage $(DEMO_STORAGE)
	$(BIN)/raymem status demo --storage $(DEMO_STORAGE)
	$(BIN)/raymem estimates demo --storage $(DEMO_STORAGE) --out $(DEMO_STORAGE)/demo-mem.parquet \
		--figure $(DEMO_STORAGE)/demo-mem.png
	$(BIN)/raymem pairs demo --storage $(DEMO_STORAGE) --out $(DEMO_STORAGE)/demo-pairs.parquet
	$(BIN)/raymem figures demo --storage $(DEMO_STORAGE) --out $(DEMO_STORAGE)/demo-figures

# pytest exits 5 when a selection runs no test; that is not a failure of the suite.
NO_TESTS_IS_OK = rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests selected"; exit 0; fi; exit $$rc

test: setup
	$(BIN)/python -m pytest -q --timeout 900 tests; $(NO_TESTS_IS_OK)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --timeout 900 tests; $(NO_TESTS_IS_OK)

bench: setup
	$(BIN)/python scripts/bench_estimator.py
	$(BIN)/python scripts/bench_runner.py

clean:
	rm -rf $(VENV) $(DEMO_STORAGE)
