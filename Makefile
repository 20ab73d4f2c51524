# The entry point for people: run, test, bench, lint, deb.
# Everything runs from a virtualenv in .venv (created on first use) so the
# system Python is never touched.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration test-system bench lint format deb clean nftables-link

$(STAMP): pyproject.toml requirements-debian12.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-debian12.txt
	$(PY) -m pip install -q -e '.[test]'
	$(MAKE) --no-print-directory nftables-link
	touch $(STAMP)

# python3-nftables is a Debian package (libnftables through ctypes), not on
# PyPI: when it is installed, link that one package into the venv (not the
# whole dist-packages, whose versions would shadow the pinned ones). Run on
# every make so an existing venv picks it up too; without it the daemon
# keeps its bans in-process and says so in one log line.
NFT_SYSTEM := /usr/lib/python3/dist-packages/nftables
nftables-link:
	@if [ -d $(NFT_SYSTEM) ] && [ -x $(PY) ]; then \
		ln -sfn $(NFT_SYSTEM) "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"; \
	fi

# Start the switch in the foreground on 127.0.0.1:5060 with SQLite and
# recordings under ./var/. Ctrl-C stops everything.
run: $(STAMP) nftables-link
	$(PY) -m softswitch.cli.devrun

test: $(STAMP) nftables-link
	$(PY) -m pytest -q tests

test-unit: $(STAMP) nftables-link
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP) nftables-link
	$(PY) -m pytest -q tests/integration

test-system: $(STAMP) nftables-link
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
