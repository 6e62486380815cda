"""python -m tests.controlplane: serve the reference control plane until SIGINT/SIGTERM.

What an operator or a demo needs to talk to it (its URL, the bootstrap token, the administrator's
API key, the public key that signs instructions) is printed once it listens: a banner by default,
or `export NAME='value'` lines for a shell with `--print-env` (and/or written 0600 to
`--env-file`). `--background` returns once the server listens and leaves it running in its own
session, its log in `--log`; `eval "$(python -m tests.controlplane --background --print-env)"`
sets CONTROL_PLANE_URL, BOOTSTRAP_TOKEN, ADMIN_API_KEY, SIGNING_PUBLIC_KEY and CONTROL_PLANE_PID.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from types import FrameType

from .server import ControlPlane
from .signing import load_or_create_signing_key


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="listen port; 0 picks a free one (default 8787)")
    p.add_argument("--db", default=":memory:", help="SQLite file, or :memory: (default)")
    p.add_argument("--access-ttl", type=int, default=900, help="access token lifetime, seconds")
    p.add_argument("--refresh-ttl", type=int, default=604800, help="refresh token lifetime, seconds")
    p.add_argument("--rate-read", type=int, default=1000, help="GET calls per minute per key")
    p.add_argument("--rate-write", type=int, default=100, help="POST/PUT calls per minute per key")
    p.add_argument("--rate-scan", type=int, default=10, help="POST /v1/scans per minute per key")
    p.add_argument("--rate-ephemeral", type=int, default=50, help="POST /v1/ephemeral per minute per key")
    p.add_argument("--poll-interval", type=int, default=60, help="poll_interval sent to agents, seconds")
    p.add_argument(
        "--no-long-poll", action="store_true", help="ignore `wait` on instruction requests (an older server)"
    )
    p.add_argument("--max-held", type=int, default=1000, help="requests held at once for §6.1 (default 1000)")
    p.add_argument("--signing-key", help="Ed25519 private key file (PEM or OpenSSH); created if absent")
    p.add_argument("--print-env", action="store_true", help="print `export NAME='value'` lines, no banner")
    p.add_argument("--env-file", metavar="FILE", help="also write the export lines to FILE (mode 0600)")
    p.add_argument(
        "--background",
        action="store_true",
        help="return once listening; the server runs on in its own session",
    )
    p.add_argument(
        "--log", metavar="FILE", help="log here (default: standard error; with --background: nowhere)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request line")
    return p.parse_args(argv)


def env_lines(cp: ControlPlane, pid: int) -> str:
    """What a shell needs, as `export` lines (quoted for sh)."""
    values = {
        "CONTROL_PLANE_URL": cp.url,
        "BOOTSTRAP_TOKEN": cp.bootstrap_token,
        "ADMIN_API_KEY": cp.admin_api_key,
        "SIGNING_PUBLIC_KEY": cp.signing_public_key_openssh,
        "CONTROL_PLANE_PID": str(pid),
    }
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def banner(cp: ControlPlane) -> str:
    # The banner is the only place secrets are printed: the operator needs them to enroll and administer.
    return (
        f"url: {cp.url}\n"
        f"bootstrap_token: {cp.bootstrap_token}\n"
        f"admin_api_key: {cp.admin_api_key}\n"
        f"signing_kid: {cp.signing_kid}\n"
        f"signing_public_key: {cp.signing_public_key_openssh}\n"
        f"{cp.signing_public_key_pem}"
    )


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def serve(args: argparse.Namespace, announce: int | None) -> int:
    """Start, say what a client needs (to stdout, or through the `announce` pipe), serve until a signal."""
    cp = ControlPlane.start(
        host=args.host,
        port=args.port,
        db=args.db,
        access_ttl=args.access_ttl,
        refresh_ttl=args.refresh_ttl,
        limits={
            "read": args.rate_read,
            "write": args.rate_write,
            "scan": args.rate_scan,
            "ephemeral": args.rate_ephemeral,
        },
        signing_key=load_or_create_signing_key(args.signing_key) if args.signing_key else None,
        poll_interval=args.poll_interval,
    )
    cp.long_poll = not args.no_long_poll
    cp.max_held = args.max_held
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exports = env_lines(cp, os.getpid())
    if args.env_file:
        _write_private(args.env_file, exports)
    text = exports if args.print_env else banner(cp)
    if announce is None:
        print(text, end="", flush=True)
    else:
        os.write(announce, text.encode())
        os.close(announce)
    stopping.wait()
    cp.stop()
    logging.getLogger("tests.controlplane").info("stopped")
    return 0


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.log:
        logging.basicConfig(level=level, format="%(asctime)s %(message)s", filename=args.log)
    elif not args.background:
        logging.basicConfig(level=level, format="%(asctime)s %(message)s")
    else:
        logging.disable(logging.CRITICAL)


def background(args: argparse.Namespace) -> int:
    """Fork before any thread exists; the parent prints what the child announces once it listens
    (or fails when the child dies first), the child serves on in its own session."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        if not chunks:
            print("control plane did not start" + (f": see {args.log}" if args.log else ""), file=sys.stderr)
            return 1
        sys.stdout.write(b"".join(chunks).decode())
        return 0
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _setup_logging(args)
    try:
        code = serve(args, write_end)
    except BaseException:
        logging.getLogger("tests.controlplane").exception("control plane failed")
        code = 1
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.background:
        return background(args)
    _setup_logging(args)
    return serve(args, None)


if __name__ == "__main__":
    sys.exit(main())
