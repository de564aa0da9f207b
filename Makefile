# One-command set-up: every target creates .venv and installs the pinned requirements when missing.
PY      := .venv/bin/python
KERNEL  := synth-suite
STAMP   := .venv/.installed
PARAMS  ?= params/demo.yaml
SWEEP   ?= params/sweeps/demo.yaml

.PHONY: setup test demo lab run sweep bench clean-smoke

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'synth_suite.pth').write_text('$(CURDIR)\n')"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (synth-suite)" >/dev/null
	touch $(STAMP)

# Unit tests, then every notebook run as stored (smoke parameters) through nbval.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-kernel-name $(KERNEL) \
		--nbval-cell-timeout 900 notebooks

demo: $(STAMP)
	mkdir -p runs/demo/notebooks
	$(PY) -m papermill -k $(KERNEL) --log-output --no-progress-bar notebooks/01_data_curation.ipynb \
		runs/demo/notebooks/01_data_curation.ipynb -p params_file $(PARAMS) -p figures_dir figures

lab: $(STAMP)
	.venv/bin/jupyter lab --notebook-dir=notebooks

clean-smoke:
	rm -rf runs/smoke
