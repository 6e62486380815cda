"""`sshklm-agent rollback ROTATION_ID`: restore the files a rotation changed, if unchanged since.

All or nothing: every file the rotation wrote must still hold exactly the bytes it wrote
(sha256 recorded at the time), otherwise nothing is restored and the changed file is named.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from agent.commands import UsageError
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
    from agent.store.db import DB_NAME, StoreError, open_database
    from agent.store.state import StateStore

    if not os.path.exists(os.path.join(config.state.dir, DB_NAME)):
        raise UsageError(
            f"rollback: no agent state in {config.state.dir}: the agent has not run here "
            "(or state.dir names another directory)"
        )
    try:
        db = open_database(config.state.dir)
    except StoreError as exc:
        print(f"sshklm-agent: rollback: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fs = HostFS("/")
    try:
        files = SafeHostFiles(fs, backups_dir_for(config.state.dir))
        store = StateStore(db)
        if not store.backups_for(rotation_id):
            raise UsageError(
                f"rollback: no rotation {rotation_id} recorded on this host (a rotation id looks like "
                "rot_…: see the control plane's rotation, or the instruction_applied events)"
            )
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
