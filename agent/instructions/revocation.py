"""`revoke_keys` / `unrevoke_keys`: the host's key revocation list (sshd's RevokedKeys).

Lockout safety is the design constraint: sshd refuses every public key while its RevokedKeys file
cannot be read or parsed. So the live KRL is only ever replaced, never edited or removed, and only
by bytes that are known good:

1. sshd must use the agent's file (`sshd_uses`), else `SSHD_NOT_CONFIGURED` and nothing changes;
2. the new entry list (the agent's record, store/trust_state.py: a KRL is never parsed back, an
   entry never "removed" from one) is recorded first, as a new generation not yet installed;
3. ssh-keygen builds the whole KRL from the list, in a private scratch directory (`ssh-keygen -k`,
   `-u -s CA` per CA), and `ssh-keygen -Q -l` must list exactly the list's entries and generation;
4. the bytes replace the live file atomically (safe file layer: temp file root 0644, fsync, rename,
   fsync of the directory), guarded by the stat of the read, and are read back;
5. the record notes the installed generation and sha256.

A failure in 3 or 4 leaves the live file as it was and takes the record back: the result is
`failed` with ssh-keygen's or the system's reason (KEYGEN_MISSING, KEYGEN_FAILED, KRL_INVALID,
IO_ERROR e.g. disk full, UNSAFE_PATH). A crash between 2 and 5 leaves the record ahead of the
file: `maintain` (at start, then every `trust.check_s`) installs it. `maintain` also re-creates a
KRL that is missing (sshd refuses every key meanwhile); a KRL someone else changed or corrupted is
left as it is (discovery reports it at once: `file_unreadable`, `status`) and rewritten from the
record by the next revoke/unrevoke instruction (any: one that changes nothing still repairs).

Unrevoking a key or a fingerprint takes out every entry revoking that fingerprint (the key's and
the hash's); a certificate serial or key id is taken out under its CA only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.host.keygen import KeygenError
from agent.host.safefs import UnsafePath
from agent.host.trust_files import FILE_MODE, REVOKED_KEYS, Current, TrustLayout
from agent.instructions.backups import sha256_hex
from agent.instructions.edit import Outcome, io_reason
from agent.instructions.errors import ApplyFailed
from agent.instructions.sshd_uses import require_sshd_uses
from agent.instructions.trust_ports import KrlTool, SshdConfigured, TrustFiles
from agent.instructions.validate_trust import Revocation
from agent.ssh.krl import KrlContents, RevocationEntry, expected_contents
from agent.store.trust_state import RevocationState, TrustState

log = logging.getLogger("sshklm.trust")

# SHA256 hashes in a KRL (`hash:` lines): OpenSSH 7.9 and later. An older sshd fails on the KRL
# section it does not know, and refuses every key.
SHA256_KRL_SINCE = (7, 9)


def revise(current: frozenset[RevocationEntry], body: Revocation) -> frozenset[RevocationEntry]:
    """The entry list after `body`. Pure."""
    if body.action == "revoke":
        return current | body.entries
    fingerprints = {e.fingerprint() for e in body.entries if e.kind in ("key", "hash")}
    certificates = {e for e in body.entries if e.kind in ("serial", "key_id")}
    return frozenset(
        e
        for e in current
        if e not in certificates and not (e.kind in ("key", "hash") and e.fingerprint() in fingerprints)
    )


def revoked_fingerprints(entries: frozenset[RevocationEntry]) -> set[str]:
    return {fp for e in entries if (fp := e.fingerprint()) is not None}


def openssh_version(text: str | None) -> tuple[int, int] | None:
    """(major, minor) of "OpenSSH_9.2p1 ..." ; None when unknown."""
    if not text or not text.startswith("OpenSSH_"):
        return None
    head = text[len("OpenSSH_") :].split("p", 1)[0].split(" ", 1)[0]
    parts = head.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


class Revocations:
    """Applies revocation instructions and keeps the live KRL in step with the record."""

    def __init__(
        self,
        files: TrustFiles,
        keygen: KrlTool,
        sshd: SshdConfigured,
        state: TrustState,
        layout: TrustLayout,
        *,
        work_dir: str,
        sshd_version: Callable[[], str | None],
    ) -> None:
        self.files = files
        self.keygen = keygen
        self.sshd = sshd
        self.state = state
        self.layout = layout
        self.work_dir = work_dir
        self.sshd_version = sshd_version

    # -- an instruction -------------------------------------------------------------------------

    def apply(self, body: Revocation) -> Outcome:
        require_sshd_uses(self.sshd, self.layout, ("revokedkeys",))
        self._check_sha256_support(body)
        record = self._record()
        entries = revise(record.entries, body)
        live = self._read_live()
        changed = entries != record.entries
        outcome = self._outcome(body, record.entries, entries)
        if not changed and not record.pending and self._installed(live, record):
            return outcome  # in place: the file is not rewritten
        self._install_generation(record, entries, live, changed)
        outcome.written.append(self.files.path(REVOKED_KEYS))
        return outcome

    def _check_sha256_support(self, body: Revocation) -> None:
        if body.action != "revoke" or not any(e.kind == "hash" for e in body.entries):
            return
        version = openssh_version(self.sshd_version())
        if version is not None and version < SHA256_KRL_SINCE:
            raise ApplyFailed(
                "UNSUPPORTED",
                "revoking by SHA256 fingerprint needs OpenSSH 7.9 or later "
                f"(this sshd is {version[0]}.{version[1]}): revoke the full public key instead",
            )

    def _outcome(
        self, body: Revocation, before: frozenset[RevocationEntry], after: frozenset[RevocationEntry]
    ) -> Outcome:
        was, now = revoked_fingerprints(before), revoked_fingerprints(after)
        return Outcome(
            fingerprints_after=[fp for fp in body.fingerprints if fp in now],
            added=sorted(now - was),
            removed=sorted(was - now),
        )

    # -- start and the periodic check ---------------------------------------------------------------

    def maintain(self) -> str | None:
        """Install a recorded generation that is not installed (a crash, a failed install) and
        re-create a missing KRL. Returns what was done (None: nothing), raises ApplyFailed."""
        record = self._record()
        live = self._read_live()
        if live is not None and not record.pending:
            return None
        self._install_generation(record, record.entries, live, changed=False)
        what = "written (it was missing)" if live is None else f"generation {record.generation} installed"
        log.warning("key revocation list %s %s", self.files.path(REVOKED_KEYS), what)
        return what

    def live_contents(self) -> KrlContents | None:
        """What the live KRL revokes (None when it is missing); raises ApplyFailed when unusable."""
        live = self._read_live()
        if live is None:
            return None
        try:
            return self.keygen.list_krl(live.data)
        except KeygenError as exc:
            raise ApplyFailed(exc.code, exc.message) from None

    # -- the steps ----------------------------------------------------------------------------------

    def _record(self) -> RevocationState:
        try:
            return self.state.revocations()
        except (OSError, ValueError) as exc:
            raise ApplyFailed("STATE_ERROR", str(exc)) from None

    def _save(self, record: RevocationState) -> None:
        try:
            self.state.save_revocations(record)
        except Exception as exc:  # sqlite3.Error (disk full), OSError
            raise ApplyFailed("IO_ERROR", f"state store: {type(exc).__name__}: {exc}") from None

    def _read_live(self) -> Current | None:
        try:
            return self.files.read(REVOKED_KEYS)
        except (UnsafePath, OSError) as exc:
            raise ApplyFailed(_code(exc), io_reason(exc)) from None

    @staticmethod
    def _installed(live: Current | None, record: RevocationState) -> bool:
        return (
            live is not None
            and sha256_hex(live.data) == record.installed_sha256
            and (live.info.uid, live.info.gid, live.info.mode & 0o7777) == (0, 0, FILE_MODE)
        )

    def _install_generation(
        self,
        record: RevocationState,
        entries: frozenset[RevocationEntry],
        live: Current | None,
        changed: bool,
    ) -> None:
        generation = record.generation + 1 if changed else record.generation
        wanted = RevocationState(entries, generation, record.installed_generation, record.installed_sha256)
        if changed:
            self._save(wanted)  # recorded before the file changes (see the module docstring)
        try:
            data = self._build(entries, generation)
            self._replace(data, live)
        except ApplyFailed:
            if changed:
                self._save(record)  # the file did not change: neither does the record
            raise
        self._save(RevocationState(entries, generation, generation, sha256_hex(data)))

    def _build(self, entries: frozenset[RevocationEntry], generation: int) -> bytes:
        try:
            data = self.keygen.build_krl(
                entries,
                version=generation,
                comment=f"sshklm-agent generation {generation}",
                work_dir=self.work_dir,
            )
            listed = self.keygen.list_krl(data)
        except KeygenError as exc:
            raise ApplyFailed(exc.code, exc.message) from None
        if not listed.same_revocations(expected_contents(entries)) or listed.version != generation:
            raise ApplyFailed(
                "KRL_INVALID", "the KRL ssh-keygen built does not list exactly the agent's entries"
            )
        return data

    def _replace(self, data: bytes, live: Current | None) -> None:
        try:
            self.files.write(REVOKED_KEYS, data, expect=live)
            back = self.files.read(REVOKED_KEYS)
        except (UnsafePath, OSError) as exc:
            raise ApplyFailed(_code(exc), io_reason(exc)) from None
        if back is None or back.data != data:
            raise ApplyFailed("IO_ERROR", f"{self.files.path(REVOKED_KEYS)}: not what was written")


def _code(exc: BaseException) -> str:
    return "UNSAFE_PATH" if isinstance(exc, UnsafePath) else "IO_ERROR"
