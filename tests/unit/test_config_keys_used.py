"""No dead settings: every key of config.example.toml is read somewhere in the agent.

A setting that is documented and parsed but never read is a bug that looks like a feature
(`server.max_attempts` and `schedule.ephemeral_sweep_s` were both). The check reads the agent's
source with `ast` (no new dependency) and looks, outside agent/config.py, for the field being read
from its section:

* `<config>.<section>.<field>`, where `<config>` is a name or attribute called `config` or `cfg`,
  or a name annotated `Config`, or a name assigned from one of those;
* `<alias>.<field>`, where `<alias>` was assigned `<config>.<section>` in the same function (or at
  module level), or is a parameter annotated with the section's class (`ScheduleConfig`, ...).

Reads it cannot see (getattr, a section passed to an unannotated parameter) make it fail: write
the read plainly, or annotate the parameter.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from agent.config import Config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
AGENT = ROOT / "agent"

SECTION_CLASSES = {name: cls.__name__ for name, cls in typing.get_type_hints(Config).items()}
CONFIG_NAMES = frozenset({"config", "cfg"})


def _example_keys() -> list[tuple[str, str]]:
    data = tomllib.loads(EXAMPLE.read_text())
    return [(section, key) for section, table in data.items() for key in table]


def _annotation_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return node.value.rsplit(".", 1)[-1]
    return None


class _Scope:
    """The names of one function (or module) that hold the Config or one of its sections."""

    def __init__(self, parent: _Scope | None) -> None:
        self.configs: set[str] = set(CONFIG_NAMES) if parent is None else set(parent.configs)
        self.sections: dict[str, str] = {} if parent is None else dict(parent.sections)

    def is_config(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.configs
        return isinstance(node, ast.Attribute) and node.attr in CONFIG_NAMES

    def section_of(self, node: ast.expr) -> str | None:
        """The section `node` evaluates to, if it is one."""
        if isinstance(node, ast.Attribute) and node.attr in SECTION_CLASSES and self.is_config(node.value):
            return node.attr
        if isinstance(node, ast.Name):
            return self.sections.get(node.id)
        return None


def _reads(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(section, field) for every read of a config field in a module."""

    def visit(body: list[ast.stmt], scope: _Scope) -> Iterator[tuple[str, str]]:
        # First the bindings of this scope (flow-insensitive, like a reader of the code), then the reads.
        nodes = [n for stmt in body for n in _walk_scope(stmt)]
        for node in nodes:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                if value is None:
                    continue
                for target in targets:
                    if not isinstance(target, ast.Name):
                        continue
                    section = scope.section_of(value)
                    if section is not None:
                        scope.sections[target.id] = section
                    elif scope.is_config(value):
                        scope.configs.add(target.id)
        for node in nodes:
            if isinstance(node, ast.Attribute):
                section = scope.section_of(node.value)
                if section is not None:
                    yield section, node.attr
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = _Scope(scope)
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    annotation = _annotation_name(arg.annotation)
                    if annotation == "Config":
                        inner.configs.add(arg.arg)
                    for section, cls in SECTION_CLASSES.items():
                        if annotation == cls:
                            inner.sections[arg.arg] = section
                inner_body = node.body if isinstance(node.body, list) else [ast.Expr(node.body)]
                yield from visit(inner_body, inner)

    yield from visit(tree.body, _Scope(None))


def _walk_scope(node: ast.AST) -> Iterator[ast.AST]:
    """Every node of a scope, stopping at (but yielding) nested functions."""
    yield node
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk_scope(child)


@cache
def _fields_read() -> frozenset[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted(AGENT.rglob("*.py")):
        if path == AGENT / "config.py":
            continue
        found.update(_reads(ast.parse(path.read_text(), str(path))))
    return frozenset(found)


def test_every_example_key_is_a_config_field() -> None:
    fields = {
        (section, f.name)
        for section, cls in typing.get_type_hints(Config).items()
        for f in dataclasses.fields(cls)
    }
    assert set(_example_keys()) == fields


def test_the_check_sees_aliases_annotations_and_chains() -> None:
    source = """
def a(config):
    s = config.schedule
    return s.rescan_s

def b(cfg: Config):
    return cfg.watch.debounce_ms

def c(settings: StateConfig):
    return settings.dir

class D:
    def e(self):
        usage = self.daemon.config.usage
        return usage.log_file
"""
    reads = set(_reads(ast.parse(source)))
    assert reads == {
        ("schedule", "rescan_s"),
        ("watch", "debounce_ms"),
        ("state", "dir"),
        ("usage", "log_file"),
    }
    assert not set(_reads(ast.parse("def f(x):\n    return x.schedule.rescan_s\n")))


@pytest.mark.parametrize(
    ("section", "key"),
    _example_keys(),
    ids=[f"{section}.{key}" for section, key in _example_keys()],
)
def test_every_setting_is_read_by_the_agent(section: str, key: str) -> None:
    assert (section, key) in _fields_read(), f"{section}.{key} is parsed but nothing in agent/ reads it"
