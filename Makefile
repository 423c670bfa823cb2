# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent).
VENV := .venv/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Tiny models on 2 cores: one BLAS thread per process beats oversubscribed threads (about 10x per step under load).
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test lint

setup:
	@./scripts/setup.sh

# The main job: the whole tbi-mllm ablation (seed 000, 17 experiments, one seed) on the tiny preset;
# it ends by printing where its report is. Finished runs in runs/tbi-mllm-tiny are reused on a second call.
demo: setup
	$(VENV)/tbi ablate tbi-mllm --preset tiny --out runs/tbi-mllm-tiny

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

# Lint, the import rules, every package's tests, the cross-package tests, and every benchmark once
# with timing disabled so benchmark code cannot rot.
test: lint
	$(VENV)/python -m pytest -n 2 --dist loadgroup --benchmark-disable -q tests packages
