# cxpulse developer commands.  `make help` lists them.
# The two set-up commands of the README are `make demo` and `make test`; both install what they need first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KAFKA_LIB := deploy/kafka/lib

.DEFAULT_GOAL := help
.PHONY: help install test-tools jars demo test lint typecheck format unit faults fuzz bench bench-replay bench-state clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/cxpulse: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded]'
	@touch $@

$(VENV)/.test-tools: $(BIN)/cxpulse pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/cxpulse  ## create .venv with cxpulse (what `make demo` needs)

test-tools: $(VENV)/.test-tools  ## add pytest, ruff, mypy and the other test tools to .venv

$(KAFKA_LIB)/.resolved: deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies
	@touch $@

jars: $(KAFKA_LIB)/.resolved  ## resolve the Kafka jars from Maven Central into deploy/kafka/lib

demo: install jars  ## run the main job on the embedded default (ARGS="--duration 90s" ...); Ctrl-C stops it
	$(BIN)/cxpulse demo $(ARGS)

lint: test-tools  ## ruff lint + format check
	$(BIN)/ruff check streams schemas sinks tests benchmarks
	$(BIN)/ruff format --check streams schemas sinks tests benchmarks

typecheck: test-tools  ## mypy --strict on streams/ schemas/ sinks/
	$(BIN)/mypy

format: test-tools  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix streams schemas sinks tests benchmarks
	$(BIN)/ruff format streams schemas sinks tests benchmarks

unit: test-tools  ## the pure-logic tests only (no broker)
	$(BIN)/pytest -m unit

$(VENV)/.fuzz-tools: $(BIN)/cxpulse pyproject.toml
	$(BIN)/pip install --quiet -e '.[fuzz]'
	@touch $@

FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.fuzz-tools  ## fuzz the hot path's decoders with atheris for FUZZ_SECONDS (60); a crash is a finding
	mkdir -p .cxpulse/fuzz-corpus
	$(BIN)/python tests/fuzz/decoders.py -max_total_time=$(FUZZ_SECONDS) .cxpulse/fuzz-corpus

faults: test-tools jars  ## the fault suite: broker restarts, outages, a rolling restart, wedged and stalled processes
	$(BIN)/pytest -m faults

test: install jars lint typecheck  ## lint, typecheck, then every test, the fault suite included (starts real Kafka brokers)
	$(BIN)/pytest

bench-replay: test-tools  ## the replay benchmark (1,000,000 events; N=... to change)
	$(BIN)/python benchmarks/replay.py $(if $(N),--events $(N),)

bench-state: test-tools jars  ## memory, disk and restart time of the remembered state (ANSWERS=1000000; more: ARGS="--answers 3000000")
	$(BIN)/python -m benchmarks.state --answers $(or $(ANSWERS),1000000) $(ARGS)

$(VENV)-quix/bin/python:
	$(PYTHON) -m venv $(VENV)-quix
	$(VENV)-quix/bin/pip install --quiet quixstreams==3.28.1 fastavro==1.13.1

bench: test-tools jars $(VENV)-quix/bin/python  ## cxpulse beside a bare loop, Quix Streams, naive Faust and replay (ARGS=... to pass options), then the state run
	$(BIN)/python -m benchmarks.bench $(ARGS)
	$(BIN)/python -m benchmarks.state --answers $(or $(ANSWERS),1000000)

clean:  ## remove the venv, resolved jars and local state
	rm -rf $(VENV) $(VENV)-quix $(KAFKA_LIB) .cxpulse
