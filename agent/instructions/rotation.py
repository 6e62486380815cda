"""Rotations: add a key, remove a key, or replace one key by another, in a user's authorized keys
files (the files sshd reads for that user, as discovery resolves them).

`add` puts the key with exactly the options asked for in effect: appended to the first file sshd
always reads (creating ~/.ssh and the file when absent), or rewritten where a line of it with
other options was; `remove` acts in every file; `replace` puts the new key where the old line
was, in every file that holds the old key, and fails `KEY_NOT_FOUND` when no file holds either
key. What "in effect" means, and when nothing is written: agent/instructions/plan.py and
docs/rotation.md ("Idempotency"). The planned files are checked to be in effect before anything
is written, and the files as written are read back and checked again: `applied` is only
reported for an effect that is there (`Outcome.unmet` says what differs otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.host.safefs import UnsafePath
from agent.instructions.edit import EditRequest, FileEditor, JournalKey, Outcome, Planner
from agent.instructions.errors import ApplyFailed
from agent.instructions.plan import EditPlan, KeyChange, PlanError, plan_key_change, plan_remove, unmet
from agent.instructions.validate import Rotation, check_kept_root_from
from agent.instructions.verify import Instruction
from agent.instructions.view import HostView
from agent.inventory.evaluate import Policy
from agent.ssh.authorized_keys import DEFAULT_OPTIONS


def each_file(plan_one: Callable[[bytes], EditPlan]) -> Planner:
    """A planner for an edit whose files do not depend on each other."""

    def planner(files: Sequence[tuple[str, bytes]]) -> list[EditPlan]:
        return [plan_one(data) for _path, data in files]

    return planner


def key_change_planner(
    change: KeyChange, view: HostView, check: Callable[[bytes], None] | None = None
) -> Planner:
    """Plans `change` over all the files of an edit; refuses (before anything is written) a plan
    whose result would not be in effect. `check(new bytes)` vets each file to be written."""

    def planner(files: Sequence[tuple[str, bytes]]) -> list[EditPlan]:
        try:
            plans = plan_key_change(files, change, view.honours)
        except PlanError as exc:
            raise ApplyFailed(exc.code, exc.message) from None
        after = [
            (path, data if plan.new_data is None else plan.new_data)
            for (path, data), plan in zip(files, plans, strict=True)
        ]
        missing = unmet(after, change, view.honours)
        if missing:
            raise ApplyFailed(
                "KEY_NOT_IN_EFFECT", "the planned files would not be in effect: " + "; ".join(missing)
            )
        if check is not None:
            for plan in plans:
                if plan.new_data is not None:
                    check(plan.new_data)
        return plans

    return planner


def check_in_effect(
    view: HostView, user_name: str, paths: Sequence[str], change: KeyChange, outcome: Outcome
) -> None:
    """Read the files back after the write: what differs from the change goes to `outcome.unmet`."""
    user = view.require_user(user_name)
    files: list[tuple[str, bytes]] = []
    for path in paths:
        try:
            files.append((path, view.read_keys(user, path)))
        except FileNotFoundError:
            files.append((path, b""))
        except (OSError, UnsafePath) as exc:
            outcome.unmet.append(f"{path}: cannot be read back ({type(exc).__name__})")
    outcome.unmet.extend(unmet(files, change, view.honours))


def rotate(editor: FileEditor, view: HostView, ins: Instruction, body: Rotation, policy: Policy) -> Outcome:
    user = view.require_user(body.user)
    managed_by = f"rotation:{body.rotation_id}"
    journal = JournalKey.of(ins, body.rotation_id)
    if body.action == "remove":
        old = body.old_fingerprint
        assert old is not None
        outcome = editor.edit(
            EditRequest(
                journal,
                user,
                view.paths(user),
                each_file(lambda data: plan_remove(data, old)),
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
    add = body.action == "add"
    target = view.first_path(user) if add else None
    # add: the target first (the only file the edit may create), then the others in sshd's order.
    paths = [target, *(p for p in view.paths(user) if p != target)] if target else view.paths(user)
    change = KeyChange(
        fingerprint=new.key.fingerprint,
        key_text=new.text,
        options_text=new.options_text,
        options=new.options or DEFAULT_OPTIONS,
        keep_old_options=not add and not body.options_given,
        old_fingerprint=body.old_fingerprint,
        target=target,
    )

    def root_from(new_data: bytes) -> None:
        check_kept_root_from(new_data, new.key.fingerprint, user.uid, policy)

    outcome = editor.edit(
        EditRequest(
            journal,
            user,
            paths,
            key_change_planner(change, view, root_from if change.keep_old_options else None),
            backup_id=body.rotation_id,
            create=add,
            managed=(new.key.fingerprint, managed_by, None),
        ),
        view,
    )
    if outcome.written:
        outcome.added = [new.key.fingerprint]
        outcome.removed = [body.old_fingerprint] if body.old_fingerprint else []
    check_in_effect(view, body.user, paths, change, outcome)
    return outcome
