# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent).
VENV := .venv/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/tbi demo

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

# Lint, the import rules, every package's tests, the cross-package tests, and every benchmark once
# with timing disabled so benchmark code cannot rot.
test: lint
	$(VENV)/python -m pytest -n 2 --dist loadgroup --benchmark-disable -q tests packages
