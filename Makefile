# The two commands of the README: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive for real: ssh-keygen (oracle), sshd (end-to-end), lintian/rpm/rpmlint
# (packages), systemd-container/debootstrap (the system test: Debian 12 and 13 under a real systemd),
# curl and jq (the README walk-through, run as written by tests/integration/test_readme.py).
DEB_TEST_PACKAGES := openssh-client openssh-server lintian rpm rpmlint systemd procps python3-venv binutils \
                     util-linux systemd-container debootstrap curl jq

.PHONY: all venv run test test-latest lint typecheck unit system-deps bench clean

all: test

# Exactly the locked set: the runtime pins the packages ship, the build backend, the test tools
# (hash-checked, no resolution), then the agent itself, editable, without touching the pins.
# The build backend goes first: sdnotify ships only an sdist, built with the pinned setuptools
# (no build isolation, which would fetch an unpinned setuptools).
# `pip check` proves the locks are a complete closure. The interpreter's bundled pip is used
# as is: upgrading it would make the environment depend on what PyPI published today.
LOCKS := packaging/requirements.lock packaging/build-requirements.lock packaging/test-requirements.lock

$(STAMP): pyproject.toml $(LOCKS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r packaging/build-requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps --no-build-isolation \
	  $(addprefix -r ,$(LOCKS))
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/sshklm-agent scan --format table

# Installs the Debian packages only when root and only those missing (CI runs as root on a clean machine).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(DEB_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(DEB_TEST_PACKAGES))"; fi

# ruff, then the import contracts of pyproject.toml [tool.importlinter] (the layers of
# docs/architecture.md). --no-cache: the whole graph takes well under a second.
lint: venv
	$(BIN)/ruff check agent tests benchmarks
	$(BIN)/ruff format --check agent tests benchmarks
	$(BIN)/lint-imports --no-logo --no-cache

typecheck: venv
	$(BIN)/mypy

# Unit and integration tests as any user: a test that needs root carries @pytest.mark.root(reason=...)
# and is skipped with that reason (tests/conftest.py); the summary lists every skip and why.
# As root (CI: `make test`) the same tests all run.
unit: venv
	$(BIN)/pytest -q -n 2 --dist loadfile -rs tests

# As root, also the packages: installed on this machine (package-test) and, when systemd-nspawn
# and debootstrap are there (system-deps installs them), under a real systemd (system-test).
test: system-deps venv lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile tests
	@if [ "$$(id -u)" = 0 ] && [ -f mk/package.mk ]; then \
	  if command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null; then \
	    $(MAKE) --no-print-directory package-test system-test; \
	  else echo "systemd-nspawn or debootstrap missing: skipping system-test"; \
	    $(MAKE) --no-print-directory package-test; fi; \
	fi

# The newest releases pyproject.toml allows, in a throw-away environment: how a lock bump is
# prepared (run it before editing the pins, and now and then to hear of upstream changes early).
# Not part of `make test` or CI: someone else's release must not turn the build red.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet -e '.[test]'
	@echo "versions that differ from the locks:"; \
	$(LATEST)/bin/pip freeze --exclude-editable | tr 'A-Z_' 'a-z-' | sort >$(LATEST)/freeze.txt; \
	sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' $(LOCKS) | tr 'A-Z_' 'a-z-' | sort | comm -13 - $(LATEST)/freeze.txt | sed 's/^/  /'
	$(LATEST)/bin/ruff check agent tests benchmarks
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q -n 2 --dist loadfile tests

bench: venv
	$(BIN)/python benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) $(LATEST) dist build .pytest_cache .mypy_cache .ruff_cache

-include mk/package.mk
