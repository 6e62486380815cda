# The two commands of the README: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive for real: ssh-keygen (oracle), sshd (end-to-end), lintian/rpm (packages).
DEB_TEST_PACKAGES := openssh-client openssh-server lintian rpm systemd procps python3-venv binutils util-linux

.PHONY: all venv run test lint typecheck unit system-deps bench clean package package-test

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
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

lint: venv
	$(BIN)/ruff check agent tests benchmarks
	$(BIN)/ruff format --check agent tests benchmarks

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests

test: system-deps venv lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile tests
	@if [ "$$(id -u)" = 0 ] && [ -f mk/package.mk ]; then $(MAKE) --no-print-directory package-test; fi

bench: venv
	$(BIN)/python benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache

-include mk/package.mk
