# sshklm-agent: what purge (deb postrm) and erase (rpm %postun) do with the agent's files for sshd.
# packaging/build.sh puts this file where a script says "#@include trust-files.sh": at that time the
# package's own files are gone already, so nothing can be sourced from /usr/lib/sshklm-agent.
#
# sshd refuses EVERY public key while its RevokedKeys file cannot be read. So the trust directory
# (/etc/ssh/sshklm-agent: revoked_keys, trusted_user_ca_keys, principals/) is deleted only when
#   1. the drop-in the agent installed itself (trust.install_sshd_dropin) has been taken out,
#   2. no sshd configuration file under /etc/ssh names a file in the directory (comments aside),
#      and `sshd -T` does not either (it also sees an Include from elsewhere),
#   3. the running sshd, if any, has been reloaded onto that configuration.
# Otherwise the directory is kept and the administrator is told why and what to do.
# docs/rotation.md, "Removing the package", has the whole story; tests/integration/
# test_trust_release.py runs these functions against a real sshd.

# How the first line of the drop-in the agent writes begins (agent/host/sshd_dropin.py,
# dropin_text): a file of that name without it is the administrator's (e.g. a copy of the shipped
# example) and stays.
SSHKLM_DROPIN_HEADER='# Installed by sshklm-agent (trust.install_sshd_dropin)'

sshklm_say() {
	echo "sshklm-agent: $*" >&2
}

# sshklm_sshd_binary: the sshd to ask, empty when OpenSSH's server is not installed.
sshklm_sshd_binary() {
	for b in /usr/sbin/sshd /usr/bin/sshd; do
		if [ -x "$b" ]; then
			echo "$b"
			return 0
		fi
	done
	return 0
}

# sshklm_config_names DIR CONFIG: prints "FILE: LINE" for each non-comment line of a file under
# CONFIG's directory (the trust directory itself left out) that mentions DIR/.
sshklm_config_names() {
	grep -rIHnF --exclude-dir="$(basename "$1")" -e "$1/" "$(dirname "$2")" 2>/dev/null |
		grep -v '^[^:]*:[0-9]*:[[:space:]]*#' || true
}

# sshklm_sshd_t_names DIR CONFIG: prints the `sshd -T` lines that point at a file in DIR (none
# when sshd is not installed or `sshd -T` fails: then the files are the only evidence, above).
sshklm_sshd_t_names() {
	local sshd
	sshd=$(sshklm_sshd_binary)
	[ -n "$sshd" ] || return 0
	"$sshd" -T -f "$2" 2>/dev/null | awk -v d="$1/" '
		($1 == "revokedkeys" || $1 == "trustedusercakeys" || $1 == "authorizedprincipalsfile") &&
		index($2, d) == 1 { print "sshd -T: " $0 }' || true
}

# sshklm_reload_sshd CONFIG: make the running sshd (if any) re-read its configuration; fails when
# one runs and did not reload. A socket-activated sshd reads it at every connection anyway.
sshklm_reload_sshd() {
	local unit sshd pidfile pid
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		for unit in ssh.service sshd.service; do
			if systemctl --quiet is-active "$unit" 2>/dev/null; then
				systemctl reload "$unit" || return 1
				sshklm_settle
				return 0
			fi
		done
	fi
	# Without systemd (or an sshd it does not manage): the daemon's pid file, if it is alive.
	sshd=$(sshklm_sshd_binary)
	[ -n "$sshd" ] || return 0
	pidfile=$("$sshd" -T -f "$1" 2>/dev/null | awk '$1 == "pidfile" { print $2 }')
	if [ -z "$pidfile" ]; then
		# `sshd -T` failed: no pid file to go by, and no configuration sshd would reload with.
		# Fine only when no sshd runs at all.
		! sshklm_sshd_running
		return $?
	fi
	pid=$(cat "$pidfile" 2>/dev/null || true)
	case $pid in '' | *[!0-9]*) return 0 ;; esac
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] || return 0
	"$sshd" -t -f "$1" || return 1
	kill -HUP "$pid" || return 1
	sshklm_settle
}

# sshklm_sshd_running: is any process called sshd running (as far as this /proc shows)?
sshklm_sshd_running() {
	grep -qsx sshd /proc/[0-9]*/comm
}

# sshd re-executes itself on SIGHUP; a login it accepted just before still reads the old
# configuration's files. A moment's grace before they go.
sshklm_settle() {
	sleep 1
}

# sshklm_release_trust_files DIR DROPIN CONFIG: the purge/erase step described at the top.
#   DIR     the trust directory (/etc/ssh/sshklm-agent)
#   DROPIN  where the agent installs its sshd drop-in (/etc/ssh/sshd_config.d/sshklm-agent.conf)
#   CONFIG  sshd's main configuration file (/etc/ssh/sshd_config)
# Always returns 0: a directory kept is said, never a failed purge.
sshklm_release_trust_files() {
	local dir=$1 dropin=$2 config=$3 removed_dropin=no names
	if [ -f "$dropin" ]; then
		case $(head -n 1 "$dropin" 2>/dev/null) in
		"$SSHKLM_DROPIN_HEADER"*)
			rm -f "$dropin"
			removed_dropin=yes
			sshklm_say "removed the sshd drop-in it had installed ($dropin)"
			;;
		esac
	fi
	if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
		if [ "$removed_dropin" = yes ] && ! sshklm_reload_sshd "$config" >/dev/null; then
			sshklm_say "sshd did not reload: reload it by hand"
		fi
		return 0
	fi
	names=$(
		sshklm_config_names "$dir" "$config"
		sshklm_sshd_t_names "$dir" "$config"
	)
	if [ -n "$names" ]; then
		sshklm_say "kept $dir: sshd's configuration names files in it, and sshd refuses every public"
		sshklm_say "key while its RevokedKeys file is missing:"
		echo "$names" | sed 's/^/    /' >&2
		sshklm_say "take those lines out, reload sshd, then delete $dir"
		if [ "$removed_dropin" = yes ] && ! sshklm_reload_sshd "$config" >/dev/null; then
			sshklm_say "sshd did not reload: reload it by hand"
		fi
		return 0
	fi
	if ! sshklm_reload_sshd "$config" >/dev/null; then
		sshklm_say "kept $dir: sshd did not reload, and the running sshd may still read its files"
		sshklm_say "(sshd refuses every public key while its RevokedKeys file is missing):"
		sshklm_say "reload sshd, then delete $dir"
		return 0
	fi
	rm -rf "$dir"
	return 0
}
