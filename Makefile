# megatron_kd: `make test` and `make demo` set everything up on a fresh machine (Python 3.11,
# no GPU): they create .venv when missing and install what is needed, once.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: install system-deps lint test test-fast demo study cache-study law bench gpu-bundle clean help
SYSTEM_PKGS := slurmctld slurmd slurm-client munge

help:
	@echo "make install   create .venv with torch (CPU), megatron-core and megatron_kd"
	@echo "make test      install if needed (and Slurm's Debian packages), then ruff and the whole test suite"
	@echo "make lint      ruff check (rules in pyproject.toml)"
	@echo "make test-fast install if needed, then ruff and the fast tier: no slow, multiproc or slurm tests"
	@echo "               (markers in pyproject.toml; time: docs/PERFORMANCE.md, 'Measured times')"
	@echo "make demo      install if needed, then run the CPU demo: a small teacher trained long vs a weak one (docs/STUDY.md)"
	@echo "make study     install if needed, then study v4 (scripts/study.sh; study v3: scripts/study-v3.sh; docs/STUDY.md)"
	@echo "make law       the runs of the distillation law (3 sizes x 3 lengths, 5 teachers), mkd fit, mkd advise (docs/scaling-law.md)"
	@echo "make cache-study  the five teacher signals (full, top-64 fp32/bf16, top-8 bf16, 12 draws) x 3 seeds (docs/PERFORMANCE.md)"
	@echo "make bench     install the benchmarks' extras, then run bench/ (docs/PERFORMANCE.md)"
	@echo "make gpu-bundle  fill gpu_bundle/wheels (cp312 wheels; size: docs/PERFORMANCE.md section 7) for scripts/gpu_check.sh on a GPU machine"

install: $(STAMP)

# Re-runs only when a requirements file or pyproject.toml changes. torch (the pinned CPU build)
# and numpy go first: megatron-core's build and import need them. megatron-core 0.19.2 declares
# Python >= 3.12 but runs on 3.11, so it alone is built from its sdist with
# --ignore-requires-python (applied to everything, that flag would pick sdists of other packages
# that need 3.12); its dependencies torch, numpy and packaging come from the other lines.
$(STAMP): requirements.txt requirements-cpu.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -r requirements-cpu.txt
	$(PIP) --ignore-requires-python --no-binary megatron-core --no-deps $$(grep -E '^megatron-core==' requirements.txt | cut -d' ' -f1)
	grep -v -E '^megatron-core==' requirements.txt > $(VENV)/requirements-rest.txt
	$(PIP) -r $(VENV)/requirements-rest.txt -c requirements-cpu.txt
	$(PIP) -r requirements-dev.txt -c requirements-cpu.txt
	PYTHONWARNINGS=ignore $(PIP) --no-deps --no-build-isolation -e .  # setuptools' editable-install notice is not for users
	$(PY) -c "import torch, megatron.core, megatron_kd; print('installed: torch', torch.__version__)" 2>/dev/null
	@touch $(STAMP)

# The Slurm tests start a real slurmctld/slurmd/munge on localhost: Debian's packages (root).
system-deps:
	@if ! command -v slurmctld >/dev/null 2>&1 && ! test -x /usr/sbin/slurmctld; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(SYSTEM_PKGS) (for the Slurm tests)"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PKGS) >/dev/null; \
	  else echo "note: not root, cannot install $(SYSTEM_PKGS); the Slurm tests will be skipped (CI=true: fail)"; fi; \
	fi

lint: install
	$(VENV)/bin/ruff check

# Both cores: pytest-xdist, one test module per worker at a time (--dist loadscope), so a
# module's fixtures (a trained teacher, the local Slurm cluster) are built once; the longest
# modules first (tests/scheduling.py; --no-loadscope-reorder keeps that order), so the two
# workers end together.
TEST_WORKERS ?= 2

test: install system-deps lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=12

# The tier to run while working: unit and numerics tests, one process each.
test-fast: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=8 -m "not slow and not multiproc and not slurm"

demo: install
	bash scripts/demo.sh

study: install
	bash scripts/study.sh

# the distillation scaling law fitted on this machine's runs (docs/scaling-law.md)
law: install
	bash scripts/law.sh

# which teacher cache to use (docs/PERFORMANCE.md section 4): five teacher signals x 3 seeds
cache-study: install
	bash scripts/cache_study.sh

# The benchmarks compare against NVIDIA Model-Optimizer's own loss: its package and what its
# megatron plugin imports are benchmark dependencies only (requirements-bench.txt).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PIP) -r requirements-bench.txt -c requirements-cpu.txt
	@touch $@

bench: $(BENCH_STAMP)
	@mkdir -p bench/results
	$(PY) bench/kd_loss.py --repeats 3 --json-out bench/results/kd_loss_32k.json
	$(PY) bench/kd_loss.py --repeats 3 --tokens 2048 --vocab 131072 --json-out bench/results/kd_loss_128k.json
	$(PY) bench/fused_output.py --gemm-chunks 16 256 --json-out bench/results/fused_output.json
	$(PY) bench/kd_step.py --steps 40 --json-out bench/results/kd_step.json
	$(PY) bench/kd_step.py --rows auto --steps 16 --json-out bench/results/kd_step_auto.json
	$(PY) bench/cache_rows.py --json-out bench/results/cache_rows.json
	test -f data/corpus/corpus.json || $(VENV)/bin/mkd data corpus --out data/corpus
	$(PY) bench/preprocess.py --mb 300 --json-out bench/results/preprocess.json
	$(PY) bench/report_table.py --rows 1000 10000 100000 --wide --json-out bench/results/report_table.json

# scripts/gpu_check.sh runs on a GPU machine with Python 3.12, CUDA torch and triton and no network:
# what else it imports travels in gpu_bundle/ (git-ignored). --no-deps: torch and triton are there.
GPU_WHEELS := $$(grep -E '^(megatron-core|pyyaml|psutil|numpy)==' requirements.txt requirements-cpu.txt | cut -d: -f2 | cut -d' ' -f1) \
	packaging pytest==9.2.0 pluggy iniconfig pygments
gpu-bundle: install
	rm -rf gpu_bundle/wheels && mkdir -p gpu_bundle/wheels
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -d gpu_bundle/wheels $(GPU_WHEELS)
	@du -sh gpu_bundle/wheels && ls gpu_bundle/wheels

clean:
	rm -rf runs .pytest_cache
