"""`trust_ca` / `untrust_ca`: sshd's TrustedUserCAKeys and the accounts' AuthorizedPrincipalsFile.

Trust model (sshd's, not ours to change): every CA in TrustedUserCAKeys is trusted for every
principal in an account's principals file; a principals file does not say which CA may sign for a
principal. So `trust_ca` for CA A with `{"alice": ["alice-oncall"]}` also lets any other trusted CA
log in as alice with a certificate for `alice-oncall`. The agent records which CA asked for which
principals: `untrust_ca` takes out the CA's key and the principals only it asked for.

The files are rebuilt from the agent's record (store/trust_state.py) on every change, never
parsed back; the agent owns its principals directory, so a file there that the record does not
ask for is removed at the next change (discovery reports it meanwhile). Writes go through the safe
file layer (atomic, root:root 0644, guarded by the read's stat). Order keeps every intermediate
state no more permissive than the start or the end: `trust_ca` writes the principals before the
CA key, `untrust_ca` the CA key (trust gone at once) before the principals. Nothing is written
when sshd does not use the agent's files (`SSHD_NOT_CONFIGURED`). A failure after some files were
written puts the written ones back; when even that fails, the record stays ahead of the files and
`maintain` (start, then every `trust.check_s`) completes the change.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from agent.host.safefs import UnsafePath
from agent.host.trust_files import FILE_MODE, PRINCIPALS, TRUSTED_USER_CA_KEYS, Current, TrustLayout
from agent.instructions.backups import sha256_hex
from agent.instructions.edit import Outcome, io_reason
from agent.instructions.errors import ApplyFailed
from agent.instructions.sshd_uses import require_sshd_uses
from agent.instructions.trust_ports import SshdConfigured, TrustFiles
from agent.instructions.validate_trust import TrustCa, UntrustCa
from agent.ssh.keys import parse_public_key_text
from agent.ssh.principals import render_principals
from agent.store.trust_state import CaTrustState, TrustedCa, TrustState

log = logging.getLogger("sshklm.trust")

CA_FILE_HEADER = (
    "# Managed by sshklm-agent: the user CAs the control plane trusts (trust_ca). Rewritten by the\n"
    "# agent; a change made here is reported and overwritten.\n"
)


def revise_cas(cas: tuple[TrustedCa, ...], body: TrustCa | UntrustCa) -> tuple[TrustedCa, ...]:
    """The CA records after `body` (sorted by ca_id). Pure."""
    kept = [c for c in cas if c.ca_id != body.ca_id]
    if isinstance(body, TrustCa):
        kept.append(TrustedCa(body.ca_id, body.public_key, body.principals))
    return tuple(sorted(kept, key=lambda c: c.ca_id))


def render_files(cas: tuple[TrustedCa, ...]) -> dict[str, bytes]:
    """Every file the record asks for: the CA keys file (always, even empty) and one principals
    file per account with any principal. Pure."""
    ca_ids: dict[str, list[str]] = {}
    for ca in cas:
        ca_ids.setdefault(ca.public_key, []).append(ca.ca_id)
    lines = "".join(f"{key} sshklm-ca:{','.join(ids)}\n" for key, ids in sorted(ca_ids.items()))
    files = {TRUSTED_USER_CA_KEYS: (CA_FILE_HEADER + lines).encode("ascii")}
    per_user: dict[str, set[str]] = {}
    for ca in cas:
        for user, principals in ca.principals:
            per_user.setdefault(user, set()).update(principals)
    for user, union in sorted(per_user.items()):
        if union:
            files[f"{PRINCIPALS}/{user}"] = render_principals(union)
    return files


class CaTrust:
    """Applies CA-trust instructions and keeps the files in step with the record."""

    def __init__(
        self, files: TrustFiles, sshd: SshdConfigured, state: TrustState, layout: TrustLayout
    ) -> None:
        self.files = files
        self.sshd = sshd
        self.state = state
        self.layout = layout

    def apply(self, body: TrustCa | UntrustCa) -> Outcome:
        require_sshd_uses(self.sshd, self.layout, ("trustedusercakeys", "authorizedprincipalsfile"))
        record = self._record()
        cas = revise_cas(record.cas, body)
        changed = cas != record.cas
        current = self._read_all(cas)
        desired = render_files(cas)
        outcome = Outcome(
            fingerprints_after=[parse_public_key_text(c.public_key)[0].fingerprint for c in cas],
            added=[body.fingerprint] if isinstance(body, TrustCa) and changed else [],
            removed=sorted(
                {
                    parse_public_key_text(c.public_key)[0].fingerprint
                    for c in record.cas
                    if c.ca_id == body.ca_id and c.public_key not in {x.public_key for x in cas}
                }
            ),
        )
        if not changed and not record.pending and _in_place(desired, current, record):
            return outcome
        outcome.written = self._install(
            record, cas, desired, current, changed, untrust=isinstance(body, UntrustCa)
        )
        return outcome

    def maintain(self) -> str | None:
        """Complete a recorded change that is not (fully) installed, and re-create missing files.
        Files changed by someone else are left for the next instruction (discovery reports them)."""
        record = self._record()
        desired = render_files(record.cas)
        missing = self._missing(desired)  # a listing, not a read of every file: this runs every few seconds
        if not record.pending and not missing:
            return None
        current = self._read_all(record.cas)
        written = self._install(record, record.cas, desired, current, changed=False, untrust=False)
        what = f"{len(written)} file(s) written" + (f" ({', '.join(missing)} missing)" if missing else "")
        log.warning("CA trust files: %s", what)
        return what

    # -- the steps ----------------------------------------------------------------------------------

    def _record(self) -> CaTrustState:
        try:
            return self.state.cas()
        except (OSError, ValueError) as exc:
            raise ApplyFailed("STATE_ERROR", str(exc)) from None

    def _save(self, record: CaTrustState) -> None:
        try:
            self.state.save_cas(record)
        except Exception as exc:  # sqlite3.Error (disk full), OSError
            raise ApplyFailed("IO_ERROR", f"state store: {type(exc).__name__}: {exc}") from None

    def _missing(self, desired: dict[str, bytes]) -> list[str]:
        try:
            present = {f"{PRINCIPALS}/{user}" for user in self.files.list_principals()}
            if self.files.read(TRUSTED_USER_CA_KEYS) is not None:
                present.add(TRUSTED_USER_CA_KEYS)
        except (UnsafePath, OSError) as exc:
            raise ApplyFailed(_code(exc), io_reason(exc)) from None
        return [name for name in desired if name not in present]

    def _read_all(self, cas: tuple[TrustedCa, ...]) -> dict[str, Current | None]:
        """The CA file and every principals file, asked for or present."""
        try:
            names = {TRUSTED_USER_CA_KEYS, *render_files(cas)}
            names |= {f"{PRINCIPALS}/{user}" for user in self.files.list_principals()}
            return {name: self.files.read(name) for name in sorted(names)}
        except (UnsafePath, OSError) as exc:
            raise ApplyFailed(_code(exc), io_reason(exc)) from None

    def _install(
        self,
        record: CaTrustState,
        cas: tuple[TrustedCa, ...],
        desired: dict[str, bytes],
        current: dict[str, Current | None],
        changed: bool,
        *,
        untrust: bool,
    ) -> list[str]:
        generation = record.generation + 1 if changed else record.generation
        if changed:
            self._save(replace(record, cas=cas, generation=generation))
        # The CA key last when trusting, first when untrusting (see the module docstring).
        principals = sorted(n for n in set(desired) | set(current) if n != TRUSTED_USER_CA_KEYS)
        order = [TRUSTED_USER_CA_KEYS, *principals] if untrust else [*principals, TRUSTED_USER_CA_KEYS]
        done: list[tuple[str, Current | None]] = []
        try:
            self.files.ensure_dirs()
            for name in order:
                want, have = desired.get(name), current.get(name)
                if want is None and have is not None:
                    self.files.remove(name, expect=have)
                elif want is not None and not _same(have, want):
                    self.files.write(name, want, expect=have)
                else:
                    continue
                done.append((name, have))
        except (UnsafePath, OSError) as exc:
            message = io_reason(exc)
            if self._undo(done):
                if changed:
                    self._save(record)
            else:
                message += "; some files stay written: the agent completes the change at its next check"
            raise ApplyFailed(_code(exc), message) from None
        installed = tuple(sorted((name, sha256_hex(data)) for name, data in desired.items()))
        self._save(CaTrustState(cas, generation, generation, installed))
        return [self.files.path(name) for name, _ in done]

    def _undo(self, done: list[tuple[str, Current | None]]) -> bool:
        """Put back the files written so far (best effort). True when all are as they were."""
        ok = True
        for name, before in reversed(done):
            try:
                now = self.files.read(name)
                if before is None and now is not None:
                    self.files.remove(name, expect=now)
                elif before is not None:
                    self.files.write(name, before.data, expect=now)
            except (UnsafePath, OSError):
                log.exception("CA trust: could not put %s back", self.files.path(name))
                ok = False
        return ok


def _same(have: Current | None, want: bytes) -> bool:
    return (
        have is not None
        and have.data == want
        and (have.info.uid, have.info.gid, have.info.mode & 0o7777) == (0, 0, FILE_MODE)
    )


def _in_place(desired: dict[str, bytes], current: dict[str, Current | None], record: CaTrustState) -> bool:
    """Every file as the agent last wrote it, and nothing else in its principals directory."""
    if set(current) - set(desired) and any(current[n] is not None for n in set(current) - set(desired)):
        return False
    installed = dict(record.installed)
    return all(
        _same(current.get(name), data) and installed.get(name) == sha256_hex(data)
        for name, data in desired.items()
    )


def _code(exc: BaseException) -> str:
    return "UNSAFE_PATH" if isinstance(exc, UnsafePath) else "IO_ERROR"
