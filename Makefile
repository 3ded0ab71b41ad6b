# The README's two commands:
#   make example   validate, plan, render and report every example stack into out/ — no cloud needed
#   make test      install what the tests need, then lint, type-check and run the tests
# .ci/run calls `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: example test lint typecheck schemas unit install system-deps bench fit demo e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

STACKS := $(patsubst stacks/Pulumi.%.yaml,%,$(wildcard stacks/Pulumi.*.yaml))

example: $(STAMP)
	$(BIN)/gpufleet validate --all
	$(BIN)/gpufleet plan --all
	for stack in $(STACKS); do $(BIN)/gpufleet render -s $$stack -o out/$$stack || exit 1; done
	for stack in $(STACKS); do $(BIN)/gpufleet report -s $$stack -o out/reports/$$stack || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check infra tests scripts benchmarks policy
	$(BIN)/shellcheck -S style scripts/*.sh .ci/run .github/scripts/*.sh
	$(BIN)/yamllint -s -c .yamllint.yaml stacks Pulumi.yaml infra/catalog/data ansible policy .github

typecheck: $(STAMP)
	$(BIN)/mypy infra

schemas: $(STAMP)
	$(BIN)/gpufleet schemas

# loadgroup: the end-to-end modules share one loopback fleet per xdist group (see tests/e2e); the rest is
# spread test by test.
unit: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup

# Debian packages the tests run for real (nginx with njs, openssl): scripts/apt-packages.txt.
system-deps:
	scripts/install-system-deps.sh

test: system-deps lint typecheck unit

# Benchmarks print figures; they are not pass/fail tests (these machines are noisy).
bench: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/speed.py

# A rendered stack on loopback: emulated vLLM replicas behind the real Nginx LB, Prometheus, Alertmanager.
# Needs the Debian packages of scripts/apt-packages.txt. STACK=prod make demo for another stack.
STACK ?= dev
demo: $(STAMP)
	$(BIN)/python -m infra.emulate.demo -s $(STACK)

# The data plane on loopback under load and faults, printed as a table (tests/e2e assert the behaviours).
e2e: $(STAMP)
	$(BIN)/python benchmarks/e2e.py

# Refit the capacity model's efficiencies to ../shared/calibration.
fit: $(STAMP)
	$(BIN)/python scripts/fit_efficiency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
