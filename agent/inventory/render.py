"""Human-readable rendering of an Inventory (the `scan --format table` view). Pure.

Every cell and every problem line goes through `agent.log.escape_controls`, the one escaping of
text a user may have chosen (file names, comments, account names): a newline or an escape
sequence in it shows as `\n` / `\x1b`, never as a forged row or a command to the terminal."""

from __future__ import annotations

from agent.inventory.model import Inventory, KeyRecord
from agent.log import escape_controls

_KIND = {
    "authorized_key": "auth",
    "authorized_principal_ca": "ca",
    "host_key": "host",
    "identity_key": "ident",
    "trusted_user_ca": "trust",
}
# The short names ssh-keygen -l prints in parentheses.
_SHORT = {
    "ssh-rsa": "RSA",
    "ssh-dss": "DSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "ssh-ed25519": "ED25519",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
}
_CERT = "-cert-v01@openssh.com"


def keygen_short_type(type_name: str) -> str:
    """ssh-keygen -l's label for a key type name (RSA, ED25519-CERT, ...)."""
    if type_name.endswith(_CERT):
        base = type_name[: -len(_CERT)]
        base = base + "@openssh.com" if base.startswith("sk-") else base
        return _SHORT.get(base, "UNKNOWN") + "-CERT"
    return _SHORT.get(type_name, "UNKNOWN")


def _fit(text: str, width: int, *, left: bool = False) -> str:
    text = escape_controls(text)
    if len(text) <= width:
        return text.ljust(width)
    return ("…" + text[-(width - 1) :]) if left else (text[: width - 1] + "…")


def _where(record: KeyRecord, homes: dict[str, str]) -> str:
    path = record.path
    home = homes.get(record.user or "")
    if home and home != "/" and path.startswith(home.rstrip("/") + "/"):
        path = "~" + path[len(home.rstrip("/")) :]
    return f"{path}:{record.line}" if record.line else path


def _flags(record: KeyRecord) -> str:
    out = ""
    if not record.effective:
        out += "I"
    reason = record.ineffective_reason or ""
    if "expired" in reason:
        out += "E"
    if record.encrypted is False:
        out += "P"
    return out or "-"


HEADER = ("USER", "KIND", "TYPE", "BITS", "SHA256 FINGERPRINT", "RISK", "FL", "COMMENT", "WHERE")
_WIDTHS = (8, 5, 10, 5, 43, 4, 3, 10)


def render_table(inventory: Inventory, *, width: int = 120, homes: dict[str, str] | None = None) -> str:
    homes = homes or {}
    where_width = max(16, width - sum(_WIDTHS) - len(_WIDTHS))
    lines = [" ".join(_fit(h, w) for h, w in zip(HEADER, (*_WIDTHS, where_width), strict=True)).rstrip()]
    for r in inventory.keys:
        cells = (
            _fit(r.user or "-", 8),
            _fit(_KIND[r.kind], 5),
            _fit(keygen_short_type(r.type), 10),
            str(r.bits).rjust(4) + " ",
            _fit(r.fingerprint.removeprefix("SHA256:"), 43),
            str(r.risk.score).rjust(4),
            _fit(_flags(r), 3),
            _fit(r.comment or "", 10),
            _fit(_where(r, homes), where_width, left=True),
        )
        lines.append(" ".join(cells).rstrip())
    lines.append("")
    lines.append(summary_line(inventory))
    if inventory.keys:
        lines.append(
            "FL: I ineffective (see --format json for why), E expired, P identity key without passphrase"
        )
    for err in inventory.errors:
        where = f"{err.path}:{err.line}" if err.line else err.path
        lines.append(escape_controls(f"problem: {where}: {err.error}"))
    return "\n".join(lines) + "\n"


def summary_line(inventory: Inventory) -> str:
    keys = len(inventory.keys)
    ineffective = sum(1 for k in inventory.keys if not k.effective)
    risky = sum(1 for k in inventory.keys if k.risk.score > 0)
    return (
        f"{inventory.users_scanned} users, {len(inventory.files_read)} files, {keys} keys "
        f"({ineffective} ineffective, {risky} with risk factors), {len(inventory.errors)} problems"
    )
