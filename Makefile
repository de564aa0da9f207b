# One-command set-up: every target creates .venv and installs the pinned requirements when missing.
PY      := .venv/bin/python
KERNEL  := synth-suite
STAMP   := .venv/.installed
PARAMS  ?= params/demo.yaml
SWEEP   ?= params/sweeps/demo.yaml

.PHONY: setup test demo study lab run sweep bench board rehearse transfer

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m lib.runs.setup_env --name $(KERNEL) >/dev/null   # lib importable (.pth) + the kernel; conda: see README
	touch $(STAMP)

# Unit tests, then every notebook run as stored (smoke parameters) through nbval, in a runs root of their
# own (SUITE_RUNS_ROOT, the notebooks' default runs_root): a user's runs/ is never touched. The tests' root
# is removed first, so nbval executes every stage instead of reusing an earlier checkout's. The 15 slowest unit
# tests are listed at the end (issue 24: which tests take the time).
# Last, notebooks 03 and 06 in JupyterLab in headless Chromium (tests/browser: widgets moved, figures shown once), on
# smoke runs of their own in runs/.test-browser that start from nbval's finished stages (~2 min); skipped without chromium.
TEST_RUNS := $(CURDIR)/runs/.test
test: $(STAMP)
	rm -rf "$(TEST_RUNS)" "$(TEST_RUNS)-browser"
	SUITE_RUNS_ROOT="$(TEST_RUNS)" $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests --ignore=tests/browser
	SUITE_RUNS_ROOT="$(TEST_RUNS)" $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-kernel-name $(KERNEL) \
		--nbval-cell-timeout 900 notebooks
	SUITE_RUNS_ROOT="$(TEST_RUNS)" $(PY) -m pytest -q -p no:cacheprovider -rs tests/browser

# The demo grid end to end (random, spectral-CLIP and active gating on the spectral-CLIP set at seeds 2-3, and the
# real-holdout reference; ~15 min cold on 2 cores with set-up), then the FTER table and the figure paths. Finished
# points are skipped on a rerun; SET overrides every point, e.g. a threshold rerun: make demo SET="gating.threshold=0.86"
# (only the points whose stage folders change get new run folders; the others are listed as unchanged).
# Two points at a time by default: demo.yaml gives each one CPU thread, so 2 cores run two points.
# A failed point fails the target, but only after the table over the finished points is printed.
demo: $(STAMP)
	$(PY) -m lib.runs.sweeps params/sweeps/demo.yaml --jobs $(or $(JOBS),2) $(foreach s,$(SET),--set $(s)); rc=$$?; \
	$(PY) -m lib.runs.stale --figures figures || rc=1; \
	$(PY) -m lib.runs.report --root runs/demo --sweep params/sweeps/demo.yaml $(foreach s,$(SET),--set $(s)); \
	exit $$(( rc || $$? ))

# The study: the demo's arms plus random n5 over seeds 2-5 (it reuses the demo's points; about an hour on 2 cores),
# its comparison table with each MDE, then the planner's trade-off from its own runs; figures in figures/study/.
study: $(STAMP)
	$(PY) -m lib.runs.sweeps params/sweeps/study.yaml --jobs $(or $(JOBS),2) $(foreach s,$(SET),--set $(s)); rc=$$?; \
	$(PY) -m lib.runs.report --root runs/demo --sweep params/sweeps/study.yaml $(foreach s,$(SET),--set $(s)); rr=$$?; \
	$(PY) -m lib.analyze.planner --root runs/demo --delta 0.05 --budget-min 60 --figures figures/study; \
	exit $$(( rc || rr || $$? ))

# One pipeline run, notebooks 01-06: make run PARAMS=params/demo.yaml SET="gating.threshold=0.5 seed=1"
run: $(STAMP)
	$(PY) -m lib.runs.runner $(PARAMS) $(foreach s,$(SET),--set $(s))

# A sweep: make sweep SWEEP=params/sweeps/threshold.yaml [JOBS=2] [DRY=1] [EXECUTOR=slurm|submitit-local|ray|...]
sweep: $(STAMP)
	$(PY) -m lib.runs.sweeps $(SWEEP) $(if $(JOBS),--jobs $(JOBS)) $(if $(DRY),--dry-run) $(if $(EXECUTOR),--executor $(EXECUTOR))

# Speed and memory comparisons, printed side by side (not tests).
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The source x target matrix (notebook 08) on the demo: real phantoms, their real-holdout reference, the demo
# point's synthetic set (spectral-CLIP, seed 2) and the random-tuning-set generator's. Needs make demo first.
TRANSFER_RUNS ?= [runs/demo/random_n100_seed2]
transfer: $(STAMP)
	$(PY) -m papermill -k $(KERNEL) --cwd . notebooks/08_source_target.ipynb runs/demo/08_source_target.ipynb \
		-p params_file params/demo.yaml -p figures_dir figures -y "runs: $(TRANSFER_RUNS)"

# The thesis path (params/thesis.yaml + size overrides) on the CPU with random SD1.5-size models: peak memory
# and step time per part, written to benchmarks/results/rehearse_thesis.txt (~30-40 min on 2 cores, ~15 GiB free
# for full fine-tuning, else it is skipped with the number). Not a test. REHEARSE="--skip-full" to leave it out.
rehearse: $(STAMP)
	$(PY) benchmarks/rehearse_thesis.py $(REHEARSE)

# JupyterLab on the project's environment: make lab [LAB_PORT=8888] [NO_BROWSER=1]; as root it adds --allow-root
# (Jupyter refuses root otherwise). A demo point: open a notebook and set run_dir (README, "Open a demo point").
LAB_PORT ?= 8888
lab: $(STAMP)
	.venv/bin/jupyter lab --notebook-dir=. --port=$(LAB_PORT) $(if $(NO_BROWSER),--no-browser) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# Live stage-03 training logs (loss, gate scores, skips, validation images) of every run under runs/ (or
# LOGDIR=...): each stage-03 folder's tb/ (lib/finetune/tracking.py). Open the printed address, by default localhost:6006.
board: $(STAMP)
	.venv/bin/tensorboard --logdir $(or $(LOGDIR),runs)
