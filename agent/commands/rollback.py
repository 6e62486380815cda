"""`sshklm-agent rollback ROTATION_ID`: restore the files a rotation changed, if unchanged since.

All or nothing: every file the rotation wrote must still hold exactly the bytes it wrote
(sha256 recorded at the time), otherwise nothing is restored and the changed file is named.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from agent.config import Config

EXIT_OK = 0
EXIT_FAILED = 1


def cmd_rollback(config: Config, rotation_id: str) -> int:
    from agent.host.safefs import HostFS, UnsafePath
    from agent.host.users import NssUserSource
    from agent.instructions.backups import Backups
    from agent.instructions.errors import RollbackRefused
    from agent.instructions.host_files import SafeHostFiles, backups_dir_for
    from agent.instructions.rollback import Rollback
    from agent.instructions.view import UnitsOfWork
    from agent.store.db import StoreError, open_database
    from agent.store.state import StateStore

    try:
        db = open_database(config.state.dir)
    except StoreError as exc:
        print(f"sshklm-agent: rollback: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fs = HostFS("/")
    try:
        files = SafeHostFiles(fs, backups_dir_for(config.state.dir))
        store = StateStore(db)
        units = UnitsOfWork(files, NssUserSource(), config.discovery.sshd_config)
        backups = Backups(files, store, lambda: datetime.now(UTC), config.apply.backups_per_file)
        try:
            restored = Rollback(units, store, backups).rollback(rotation_id)
        except (RollbackRefused, UnsafePath, OSError) as exc:
            print(f"sshklm-agent: rollback {rotation_id} refused: {exc}", file=sys.stderr)
            return EXIT_FAILED
        for path in restored:
            print(f"restored {path}")
        return EXIT_OK
    finally:
        fs.close()
        db.close()
