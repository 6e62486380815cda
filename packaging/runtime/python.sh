# shellcheck shell=sh
# Which CPython runs sshklm-agent. Sourced (never executed) by /usr/bin/sshklm-agent and by the
# package's maintainer scripts, so the choice is made in exactly one place.
#
# The package ships its dependencies once (pure-Python and abi3 wheels, in common/) plus one small
# directory per CPython minor version it was built for (python3.N/: the version-specific extension
# wheels, e.g. cffi's _cffi_backend), and the list of those versions (python-versions). It runs on
# the distribution's own interpreter:
#   1. /usr/bin/python3, when it is a CPython 3.N this package has python3.N/ for;
#   2. else the newest /usr/bin/python3.N that has one (RHEL 8/9, Amazon Linux 2023 and Ubuntu
#      22.04 install python3.11/python3.12 beside an older python3).
# So an upgrade that replaces the interpreter (Debian 12 -> 13: 3.11 -> 3.13) needs nothing but a
# restart. When nothing fits, sshklm_pick_python prints what to install and returns
# SSHKLM_EXIT_NO_PYTHON (5, which systemd shows as "status=5/NOTINSTALLED").

# The sourcing script sets SSHKLM_LIB and SSHKLM_BIN first (the tests point them at fakes).
SSHKLM_LIB=${SSHKLM_LIB:-/usr/lib/sshklm-agent}
SSHKLM_BIN=${SSHKLM_BIN:-/usr/bin}
SSHKLM_EXIT_NO_PYTHON=5

# sshklm_minor PATH: the minor version of the CPython 3 at PATH (e.g. 13), or nothing. The
# distributions' python3 is a symlink (chain) to python3.N, so the name answers without running
# it; any other file is asked (a free-threaded or debug build answers nothing: its ABI differs).
sshklm_minor() {
	_real=$(readlink -f "$1" 2>/dev/null) || return 0
	case ${_real##*/} in
	python3.[0-9] | python3.[0-9][0-9]) echo "${_real##*/python3.}" ;;
	*)
		[ -x "$_real" ] && "$_real" -I -S -c 'import sys
if sys.implementation.name == "cpython" and sys.version_info[0] == 3 and not sys.abiflags:
    print(sys.version_info[1])' 2>/dev/null
		;;
	esac
	return 0
}

# sshklm_supported: the minor versions this package was built for, ascending ("11 12 13 14"), from
# the list the build wrote (packaging/build.sh TARGET_PYTHONS): so a missing python3.N directory is
# told apart from a version the build never had. Nothing when the list itself is gone.
sshklm_supported() {
	_line=""
	{ read -r _line <"$SSHKLM_LIB/python-versions"; } 2>/dev/null || [ -n "$_line" ] || return 0
	_list=""
	for _v in $_line; do
		_list="${_list:+$_list }${_v#3.}"
	done
	echo "$_list"
}

# sshklm_has "LIST" ITEM: is ITEM one of the words of LIST?
sshklm_has() {
	case " $1 " in *" $2 "*) return 0 ;; esac
	return 1
}

# sshklm_pick_python: sets SSHKLM_PYTHON (the interpreter's real path) and SSHKLM_PYTHON_MINOR,
# or prints what to do on stderr and returns SSHKLM_EXIT_NO_PYTHON.
sshklm_pick_python() {
	SSHKLM_PYTHON=""
	SSHKLM_PYTHON_MINOR=""
	_supported=$(sshklm_supported)
	_default=""
	if [ -e "$SSHKLM_BIN/python3" ]; then
		_default=$(sshklm_minor "$SSHKLM_BIN/python3")
		if [ -n "$_default" ] && sshklm_has "$_supported" "$_default" && [ -d "$SSHKLM_LIB/python3.$_default" ]; then
			SSHKLM_PYTHON=$(readlink -f "$SSHKLM_BIN/python3")
			SSHKLM_PYTHON_MINOR=$_default
			return 0
		fi
	fi
	for _m in $_supported; do # ascending: the last one present is the newest
		[ -d "$SSHKLM_LIB/python3.$_m" ] || continue
		if [ -x "$SSHKLM_BIN/python3.$_m" ] && [ "$(sshklm_minor "$SSHKLM_BIN/python3.$_m")" = "$_m" ]; then
			SSHKLM_PYTHON=$SSHKLM_BIN/python3.$_m
			SSHKLM_PYTHON_MINOR=$_m
		fi
	done
	[ -n "$SSHKLM_PYTHON" ] && return 0
	sshklm_explain_no_python "$_default" "$_supported" >&2
	return $SSHKLM_EXIT_NO_PYTHON
}

# sshklm_lost_directory DEFAULT_MINOR SUPPORTED: prints a built-for version whose interpreter is here
# (python3 or python3.N) but whose directory is not: the tree is damaged, not the host unsuitable.
sshklm_lost_directory() {
	for _m in $2; do
		[ -d "$SSHKLM_LIB/python3.$_m" ] && continue
		if [ "$_m" = "$1" ] || [ -x "$SSHKLM_BIN/python3.$_m" ]; then
			echo "$_m"
			return 0
		fi
	done
	return 1
}

# sshklm_explain_no_python DEFAULT_MINOR SUPPORTED: why nothing fits, and the command that fixes it.
sshklm_explain_no_python() {
	_versions=""
	_oldest=""
	_newest=""
	for _m in $2; do
		_versions="${_versions:+$_versions, }3.$_m"
		_oldest=${_oldest:-$_m}
		_newest=$_m
	done
	if command -v apt-get >/dev/null 2>&1; then
		_install="apt-get install"
		_reinstall="apt-get install --reinstall sshklm-agent"
		_upgrade="apt-get install --only-upgrade sshklm-agent"
	elif command -v dnf >/dev/null 2>&1; then
		_install="dnf install"
		_reinstall="dnf reinstall sshklm-agent"
		_upgrade="dnf upgrade sshklm-agent"
	else
		_install="yum install"
		_reinstall="yum reinstall sshklm-agent"
		_upgrade="yum update sshklm-agent"
	fi
	_restart="systemctl restart sshklm-agent"
	if [ -z "$2" ]; then
		echo "sshklm-agent: cannot start: the installation is damaged ($SSHKLM_LIB/python-versions is missing)"
		echo "sshklm-agent: run: $_reinstall && $_restart"
	elif _lost=$(sshklm_lost_directory "$1" "$2"); then
		echo "sshklm-agent: cannot start: the installation is damaged ($SSHKLM_LIB/python3.$_lost is missing)"
		echo "sshklm-agent: run: $_reinstall && $_restart"
	elif [ -n "$1" ] && [ "$1" -gt "$_newest" ]; then
		echo "sshklm-agent: cannot start: this host's python3 is 3.$1, newer than this sshklm-agent build supports (CPython $_versions)"
		echo "sshklm-agent: run: $_upgrade && $_restart    (a release built for Python 3.$1)"
		echo "sshklm-agent:  or: $_install python3.$_newest && $_restart    (if the distribution still offers it)"
	else
		if [ -n "$1" ]; then _have="python3 is 3.$1"; else _have="there is no $SSHKLM_BIN/python3"; fi
		echo "sshklm-agent: cannot start: no supported Python: this build runs on CPython $_versions from $SSHKLM_BIN, and $_have"
		echo "sshklm-agent: run: $_install python3.$_oldest && $_restart    (or a newer one of $_versions the distribution offers)"
	fi
}
