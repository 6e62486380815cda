"""Rotations: add a key, remove a key, or replace one key by another, in a user's authorized keys
files (the files sshd reads for that user, as discovery resolves them).

`add` appends to the first file sshd always reads (creating ~/.ssh and the file when absent);
`remove` acts in every file; `replace` puts the new key where the old line was, in every file
that holds the old key, and fails `KEY_NOT_FOUND` when no file holds either key.
"""

from __future__ import annotations

from agent.instructions.edit import EditRequest, FileEditor, JournalKey, Outcome
from agent.instructions.errors import ApplyFailed
from agent.instructions.plan import EditPlan, NewLineBuilder, PlanError, plan_add, plan_remove, plan_replace
from agent.instructions.validate import Rotation, check_kept_root_from
from agent.instructions.verify import Instruction
from agent.instructions.view import HostView
from agent.inventory.evaluate import Policy


def rotate(editor: FileEditor, view: HostView, ins: Instruction, body: Rotation, policy: Policy) -> Outcome:
    user = view.require_user(body.user)
    managed_by = f"rotation:{body.rotation_id}"
    journal = JournalKey.of(ins, body.rotation_id)
    if body.action == "add":
        assert body.new is not None
        new = body.new
        outcome = editor.edit(
            EditRequest(
                journal,
                user,
                [view.first_path(user)],
                lambda _path, data: plan_add(data, new.line(), new.key.fingerprint),
                backup_id=body.rotation_id,
                create=True,
                managed=(new.key.fingerprint, managed_by, None),
            ),
            view,
        )
        outcome.added = [new.key.fingerprint] if outcome.written else []
        return outcome
    old = body.old_fingerprint
    assert old is not None
    paths = view.paths(user)
    if body.action == "remove":
        outcome = editor.edit(
            EditRequest(
                journal,
                user,
                paths,
                lambda _path, data: plan_remove(data, old),
                backup_id=body.rotation_id,
                create=False,
                managed=None,
            ),
            view,
        )
        outcome.removed = [old] if outcome.written else []
        return outcome
    assert body.new is not None
    new = body.new
    builder = NewLineBuilder(new.text, new.options_text, keep_old_options=not body.options_given)
    if not any(view.holds(user, paths, (old, new.key.fingerprint)).values()):
        raise ApplyFailed("KEY_NOT_FOUND", "old key not found in the user's authorized keys files")

    def planner(_path: str, data: bytes) -> EditPlan:
        try:
            plan = plan_replace(data, old, builder, new.key.fingerprint)
        except PlanError:  # the old key is not in this file: leave it alone
            return EditPlan(None, ())
        if not body.options_given and plan.new_data is not None:
            check_kept_root_from(plan.new_data, new.key.fingerprint, user.uid, policy)
        return plan

    outcome = editor.edit(
        EditRequest(
            journal,
            user,
            paths,
            planner,
            backup_id=body.rotation_id,
            create=False,
            managed=(new.key.fingerprint, managed_by, None),
        ),
        view,
    )
    if outcome.written:
        outcome.added, outcome.removed = [new.key.fingerprint], [old]
    return outcome
