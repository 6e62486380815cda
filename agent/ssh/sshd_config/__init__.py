"""sshd_config as OpenSSH 9.2's sshd reads it (servconf.c), and per-user resolution.

Pure: the caller reads files and hands in `load_include`, which expands an absolute glob
pattern into `[(path, text), ...]` sorted lexically (what glob(3) returns).

How sshd really resolves its configuration, reproduced here:

* Pass 1, at startup: only lines outside Match blocks (and inside `Match all`) count,
  first value wins, across Includes too. A few keywords take the arguments of their first
  line (AuthorizedKeysFile); HostKey and HostCertificate accumulate.
* Pass 2, per connection: the whole text is parsed again with the connection's details;
  now ONLY lines inside matching Match blocks count (first value wins among them), and
  what they set overrides the pass-1 value.
* An included file starts with the including line's Match state; a Match inside an
  included file lasts until the end of that file, after which the includer's state is
  restored. A Match inside a file included from a non-matching block never matches.

At scan time the connection (client host/address, local address/port, routing domain)
is unknown: a block that needs any of these does not match (as `sshd -T -C user=...`
without those values), but its AuthorizedKeysFile values are reported as conditional
when its user/group criteria match, so discovery can still read those files.

The package, by step: `keywords` (sshd's vocabulary and defaults), `syntax` (OpenSSH's shared
string grammar: strdelim, argv_split, wildcard patterns, ~ and % expansion), `model` (the parsed
tree and the effective configuration), `parse` (files and Includes -> tree), `resolve` (tree +
user -> effective configuration, and the user's file paths). Callers import from here.
"""

from __future__ import annotations

from agent.ssh.sshd_config.keywords import (
    DEFAULT_AUTHORIZED_KEYS_FILES,
    DEFAULT_HOST_KEYS,
    MAX_INCLUDE_DEPTH,
    SSHD_HOME,
)
from agent.ssh.sshd_config.model import (
    ConfigError,
    ConfigFile,
    Directive,
    EffectiveSshdConfig,
    IncludeLine,
    MatchContext,
    MatchLine,
    ParsedSshdConfig,
)
from agent.ssh.sshd_config.parse import parse_sshd_config
from agent.ssh.sshd_config.resolve import expand_user_path, resolve
from agent.ssh.sshd_config.syntax import (
    argv_split,
    match_pattern,
    match_pattern_list,
    percent_expand,
    strdelim,
)

__all__ = [
    "DEFAULT_AUTHORIZED_KEYS_FILES",
    "DEFAULT_HOST_KEYS",
    "MAX_INCLUDE_DEPTH",
    "SSHD_HOME",
    "ConfigError",
    "ConfigFile",
    "Directive",
    "EffectiveSshdConfig",
    "IncludeLine",
    "MatchContext",
    "MatchLine",
    "ParsedSshdConfig",
    "argv_split",
    "expand_user_path",
    "match_pattern",
    "match_pattern_list",
    "parse_sshd_config",
    "percent_expand",
    "resolve",
    "strdelim",
]
