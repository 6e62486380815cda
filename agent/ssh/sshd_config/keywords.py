"""sshd_config's vocabulary: the paths and defaults sshd assumes, and the keywords it knows
(servconf.c of OpenSSH 9.2 as Debian 12 builds it), grouped by how they are parsed and resolved."""

from __future__ import annotations

SSHDIR = "/etc/ssh"
MAX_INCLUDE_DEPTH = 16  # SERVCONF_MAX_DEPTH
# sshd fails on runaway include trees; we stop expanding instead of growing without bound.
MAX_INCLUDED_FILE_INSTANCES = 1024
# sshd runs with "/" as its working directory (systemd, and after daemonising), so a relative
# HostKey/TrustedUserCAKeys is relative to "/"; "~" in a path is expanded at load time with
# sshd's own uid, i.e. root's home.
SSHD_CWD = "/"
SSHD_HOME = "/root"

DEFAULT_AUTHORIZED_KEYS_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
DEFAULT_HOST_KEYS = (
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
)

WHITESPACE = " \t\r\n"


def _words(text: str) -> list[str]:
    return text.split()


# Keywords allowed only in the global section (SSHCFG_GLOBAL) of OpenSSH 9.2 as built by
# Debian 12 (GSSAPI key exchange and DebianBanner patches included).
GLOBAL_ONLY = frozenset(
    _words(
        """
    usepam pamauthenticationviakbdint port hostkey hostdsakey hostkeyagent pidfile modulifile
    serverkeybits logingracetime keyregenerationinterval syslogfacility rhostsauthentication
    hostkeyalgorithms dsaauthentication kerberosorlocalpasswd kerberosticketcleanup
    kerberosgetafstoken kerberostgtpassing afstokenpassing gssapicleanupcredentials
    gssapistrictacceptorcheck gssapikeyexchange gssapistorecredentialsonrekey gssapikexalgorithms
    checkmail listenaddress addressfamily printmotd printlastlog ignoreuserknownhosts
    xauthlocation strictmodes permituserenvironment uselogin compression tcpkeepalive keepalive
    ciphers macs protocol subsystem maxstartups persourcemaxstartups persourcenetblocksize usedns
    verifyreversemapping reversemappingcheck useprivilegeseparation hostcertificate kexalgorithms
    versionaddendum fingerprinthash securitykeyprovider debianbanner
    """
    )
)
# Keywords allowed in the global section and in Match blocks (SSHCFG_ALL).
MATCH_ALLOWED = frozenset(
    _words(
        """
    permitrootlogin loglevel logverbose rhostsrsaauthentication hostbasedauthentication
    hostbasedusesnamefrompacketonly hostbasedacceptedalgorithms hostbasedacceptedkeytypes
    rsaauthentication pubkeyauthentication pubkeyacceptedalgorithms pubkeyacceptedkeytypes
    pubkeyauthoptions kerberosauthentication gssapiauthentication passwordauthentication
    kbdinteractiveauthentication challengeresponseauthentication skeyauthentication ignorerhosts
    x11forwarding x11displayoffset x11uselocalhost permitemptypasswords rekeylimit
    allowtcpforwarding allowagentforwarding allowusers denyusers allowgroups denygroups
    gatewayports maxauthtries maxsessions banner clientaliveinterval clientalivecountmax
    authorizedkeysfile authorizedkeysfile2 acceptenv setenv permittunnel permittty permituserrc
    match permitopen permitlisten forcecommand chrootdirectory revokedkeys trustedusercakeys
    authorizedprincipalsfile include ipqos authorizedkeyscommand authorizedkeyscommanduser
    authorizedprincipalscommand authorizedprincipalscommanduser authenticationmethods
    streamlocalbindmask streamlocalbindunlink allowstreamlocalforwarding disableforwarding
    exposeauthinfo rdomain casignaturealgorithms requiredrsasize channeltimeout
    unusedconnectiontimeout
    """
    )
)
KNOWN = GLOBAL_ONLY | MATCH_ALLOWED

# Aliases sshd maps onto the same option.
ALIASES = {
    "hostdsakey": "hostkey",
    "pubkeyacceptedkeytypes": "pubkeyacceptedalgorithms",
    "dsaauthentication": "pubkeyauthentication",
}

FLAG_KEYWORDS = {
    "pubkeyauthentication": "pubkey_authentication",
    "passwordauthentication": "password_authentication",
    "strictmodes": "strict_modes",
}
SINGLE_ARG_KEYWORDS = {
    "authorizedkeyscommanduser": "authorized_keys_command_user",
    "authorizedprincipalscommanduser": "authorized_principals_command_user",
    "authorizedprincipalsfile": "authorized_principals_file",
    "trustedusercakeys": "trusted_user_ca_keys",
    "revokedkeys": "revoked_keys",
    "pubkeyacceptedalgorithms": "pubkey_accepted_algorithms",
}
COMMAND_KEYWORDS = {
    "authorizedkeyscommand": "authorized_keys_command",
    "authorizedprincipalscommand": "authorized_principals_command",
}
PERMIT_ROOT_LOGIN = {
    "without-password": "prohibit-password",
    "prohibit-password": "prohibit-password",
    "forced-commands-only": "forced-commands-only",
    "yes": "yes",
    "no": "no",
}
# Fields a matching Match block can override (copy_set_server_options + COPY_MATCH_STRING_OPTS).
MATCH_COPIED_FIELDS = frozenset(
    {
        "pubkey_authentication",
        "password_authentication",
        "permit_root_login",
        "authorized_keys_files",
        "authorized_keys_command",
        "authorized_keys_command_user",
        "authorized_principals_file",
        "authorized_principals_command",
        "authorized_principals_command_user",
        "trusted_user_ca_keys",
        "revoked_keys",
        "pubkey_accepted_algorithms",
    }
)

USER_CRITERIA = frozenset({"user", "group"})
CONNECTION_CRITERIA = frozenset({"host", "address", "localaddress", "localport", "rdomain"})
