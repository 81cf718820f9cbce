"""Which tests need the real assets in ../shared, found from what they reference.

A clone without ../shared runs every other test, so each test that reaches
the assets must be known. Besides an explicit ``@pytest.mark.shared_assets``,
a test is marked when its function, its fixtures, its parameters or the test
helpers they call (transitively, within tests/) reference ``SHARED``,
``TINYSTORIES``, ``STORIES260K`` or ``DATA``, or a value built from them
(``MODEL = TINYSTORIES / ...``, a config dict holding the path). A test that
reaches the assets some other way is not marked: on a bare clone it fails
(its model path does not exist), and :func:`explain` adds why to its report.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path
from typing import Any

import pytest

NAMES = frozenset({"SHARED", "TINYSTORIES", "STORIES260K", "DATA"})
DESELECTED = pytest.StashKey[int]()


def present(shared: Path) -> bool:
    """Both tiny models and the data sets are there."""
    return all(p.is_file() for p in (shared / "models" / "tinystories-656k" / "config.json",
                                     shared / "models" / "stories260k" / "config.json")) \
        and (shared / "data").is_dir()


def mentions(value: Any, shared: Path, depth: int = 0) -> bool:
    """A path under ``shared``, a string naming one, or a container holding either."""
    if isinstance(value, Path):
        return value == shared or shared in value.parents
    if isinstance(value, str):
        return str(shared) in value
    if depth < 4 and isinstance(value, dict):
        return any(mentions(v, shared, depth + 1) for v in [*value.keys(), *value.values()])
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        return any(mentions(v, shared, depth + 1) for v in value)
    return False


def _functions(obj: Any) -> list[types.FunctionType]:
    """The plain functions behind ``obj`` (a class yields its methods)."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if isinstance(obj, property):
        return [f for f in (obj.fget, obj.fset) if isinstance(f, types.FunctionType)]
    if isinstance(obj, type):
        return [f for v in vars(obj).values() for f in _functions(v)]
    return [obj] if isinstance(obj, types.FunctionType) else []


def _ours(obj: Any, tests: Path) -> bool:
    mod = sys.modules.get(getattr(obj, "__module__", "") or "")
    return bool(getattr(mod, "__file__", None)) and Path(mod.__file__).resolve().parent == tests  # type: ignore[union-attr]


def reaches(obj: Any, shared: Path, tests: Path, seen: set[int]) -> bool:
    """Whether ``obj``'s code (or a test helper it uses) references the assets."""
    for fn in _functions(obj):
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        g = fn.__globals__
        if any(mentions(d, shared) for d in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).values())):
            return True
        stack = [fn.__code__]
        while stack:
            code = stack.pop()
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            if any(isinstance(c, str) and mentions(c, shared) for c in code.co_consts):
                return True
            for name in code.co_names:
                if name in NAMES and (name not in g or mentions(g[name], shared)):
                    return True
                v = g.get(name)
                if v is None or isinstance(v, types.ModuleType):
                    continue
                if mentions(v, shared) or (_ours(v, tests) and reaches(v, shared, tests, seen)):
                    return True
    return False


def needs(item: pytest.Item, shared: Path, tests: Path) -> bool:
    """The test function, its fixtures and its parameters."""
    seen: set[int] = set()
    fn = getattr(item, "function", None)
    if fn is not None and reaches(fn, shared, tests, seen):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fd in (info.name2fixturedefs.get(name, ()) if info is not None else ()):
            if reaches(fd.func, shared, tests, seen):
                return True
    spec = getattr(item, "callspec", None)
    return spec is not None and any(mentions(v, shared) for v in spec.params.values())


def mark(items: list[pytest.Item], shared: Path, tests: Path) -> None:
    for item in items:
        if item.get_closest_marker("shared_assets") is None and needs(item, shared, tests):
            item.add_marker(pytest.mark.shared_assets)


def explain(report: pytest.TestReport, shared: Path) -> None:
    """A failure on a clone without the assets that names their path: say the test lacks its marker."""
    if report.failed and not present(shared) and str(shared) in report.longreprtext:
        report.sections.append(("shared assets", f"this test reaches {shared}, which is missing, but is not "
                                "marked: add @pytest.mark.shared_assets (or reference TINYSTORIES/STORIES260K/"
                                "DATA from conftest) so a bare clone deselects it"))
