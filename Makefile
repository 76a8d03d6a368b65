# The two commands a newcomer runs: `make demo` and `make test`.
# `make test` first builds docs/ with mkdocs --strict (into build/site, ignored by git).
# Each creates .venv when missing and installs the project into it, with the test and view
# extras; an existing .venv is installed again when setup.cfg or pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-ndingest
DEMO   ?= demo

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,view]"
	$(PY) -m pip install --quiet --no-deps ndio==1.1.6
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	cp configs/kasthuri11_scale3.toml $(DEMO)/
	$(VENV)/bin/ndingest sample $(DEMO)/data
	$(VENV)/bin/ndingest inspect $(DEMO)/kasthuri11_scale3.toml
	$(VENV)/bin/ndingest ingest $(DEMO)/kasthuri11_scale3.toml
	$(VENV)/bin/ndingest status $(DEMO)/kasthuri11_scale3.toml
	$(VENV)/bin/ndingest verify $(DEMO)/kasthuri11_scale3.toml
	$(VENV)/bin/ndingest slice $(DEMO)/kasthuri11_scale3.toml image xy 1100 -o $(DEMO)/image_xy_1100.png
	$(VENV)/bin/ndingest slice $(DEMO)/kasthuri11_scale3.toml annotation xy 1100 -o $(DEMO)/annotation_xy_1100.png
	@echo "store: $(abspath $(DEMO))/store  (open a channel with CloudVolume: file://$(abspath $(DEMO))/store/neurostorm_kat11_scale3/kat11_scale3/image)"
	@echo "slices: $(DEMO)/image_xy_1100.png $(DEMO)/annotation_xy_1100.png; browse it: $(VENV)/bin/ndingest view $(DEMO)/kasthuri11_scale3.toml"
	@echo "serve it: $(VENV)/bin/ndingest serve --store $(DEMO)/store   (then, the tutorial's own URLs:)"
	@echo "  http://127.0.0.1:8080/ocp/ca/kat11_scale3/image/hdf5/0/1000,1300/2000,2200/1000,1200/"
	@echo "  http://127.0.0.1:8080/ocp/ca/kat11_scale3/image/xy/0/1000,1300/2000,2200/1100/"

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=25

clean:
	rm -rf $(DEMO) .pytest_cache build/site
