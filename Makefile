# The entry point for people: run, test, bench, lint, deb.
# Everything runs from a virtualenv in .venv (created on first use) so the
# system Python is never touched.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration test-system bench lint format deb clean

$(STAMP): pyproject.toml requirements-debian12.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-debian12.txt
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Start the switch in the foreground on 127.0.0.1:5060 with SQLite and
# recordings under ./var/. Ctrl-C stops everything.
run: $(STAMP)
	$(PY) -m softswitch.cli.devrun

test: $(STAMP)
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

test-system: $(STAMP)
	$(PY) -m pytest -q tests/system

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The Debian package from a scratch copy of the working tree (tracked and new
# files; the checkout never sees build artefacts): dist/softswitch_*_all.deb,
# checked by lintian. Build dependencies: see .ci/run.
deb:
	rm -rf build/deb dist/softswitch_* && mkdir -p build/deb/src dist
	git ls-files -z --cached --others --exclude-standard | \
		tar --null -T - --ignore-failed-read -cf - | tar -xf - -C build/deb/src
	cd build/deb/src && dpkg-buildpackage -us -uc -b
	mv build/deb/softswitch_* dist/
	lintian --fail-on error dist/softswitch_*_all.deb

clean:
	rm -rf $(VENV) var build dist *.egg-info .pytest_cache .ruff_cache
