"""python -m tests.controlplane: serve the reference control plane until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .server import ControlPlane
from .signing import load_or_create_signing_key


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__)
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
    p.add_argument("-v", "--verbose", action="store_true", help="log every request line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
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
    # The banner is the only place secrets are printed: the operator needs them to enroll and administer.
    print(f"url: {cp.url}")
    print(f"bootstrap_token: {cp.bootstrap_token}")
    print(f"admin_api_key: {cp.admin_api_key}")
    print(f"signing_kid: {cp.signing_kid}")
    print(f"signing_public_key: {cp.signing_public_key_openssh}")
    print(cp.signing_public_key_pem, end="", flush=True)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stopping.wait()
    cp.stop()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
