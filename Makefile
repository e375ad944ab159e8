# Two commands on a fresh machine with python3 (3.11+):
#   make run    install into .venv (first time) and run the whole default DAG
#   make test   install into .venv (first time) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-slurm report lint plan clean

$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

run: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)

report: $(BIN)/snakemake
	$(BIN)/snakemake --report report.html

test: $(BIN)/snakemake
	$(BIN)/pytest -q

# the Slurm end-to-end test: needs root; starts a single-node cluster first
test-slurm: $(BIN)/snakemake
	bash tests/harness/slurm.sh
	$(BIN)/pytest -q -m slurm --slurm

lint: $(BIN)/snakemake
	$(BIN)/snakemake --lint

plan: $(BIN)/snakemake
	$(BIN)/bnstudy plan config/config.yaml

clean:
	rm -rf results .snakemake report.html
