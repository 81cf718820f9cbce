"""The shape of study.json as the report reads it: a wrongly typed field is one line naming it.

The renderer reads every field checked here; without the check a hand-edited
or truncated study.json would end in an AttributeError or TypeError deep
inside it instead of saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import AffectlensError


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _want(ok: bool, field: str, what: str, x: Any) -> None:
    if not ok:
        raise AffectlensError(f"study.json: {field} must be {what}, not {_kind(x)}")


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _opt(m: Mapping[str, Any], key: str, field: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``m[key]`` when absent/null or of ``kind``; else a one-line error naming ``field``."""
    x = m.get(key)
    _want(x is None or isinstance(x, kind), field, what, x)
    return x


def check_study(study: Any) -> None:
    """Refuse a study.json whose fields have the wrong types, naming the field (one line).

    The renderer reads every field below; without this a hand-edited or truncated study.json
    would end in an AttributeError or TypeError deep inside it instead of saying what is wrong."""
    _want(isinstance(study, Mapping), "the top level", "a mapping", study)
    v = study.get("version", 1)
    _want(isinstance(v, int) and not isinstance(v, bool), "version", "an integer", v)
    claims = _opt(study, "claims", "claims", list, "a list")
    for i, c in enumerate(claims or []):
        f = f"claims[{i}]"
        _want(isinstance(c, Mapping), f, "a mapping", c)
        _want(isinstance(c.get("id"), str), f"{f}.id", "a claim id", c.get("id"))
        _want(_is_num(c.get("ours")), f"{f}.ours", "a number", c.get("ours"))
        ci = c.get("ci")
        _want(isinstance(ci, list | tuple) and len(ci) == 2 and all(_is_num(x) for x in ci), f"{f}.ci",
              "a list of two numbers", ci)
        _want(isinstance(c.get("n"), int) and not isinstance(c.get("n"), bool), f"{f}.n", "an integer",
              c.get("n"))
        _opt(c, "stage", f"{f}.stage", str, "a stage name")
        _opt(c, "verdict", f"{f}.verdict", str, "a verdict")
        _opt(c, "detail", f"{f}.detail", Mapping, "a mapping")
    for i, c in enumerate(_opt(study, "not_judged", "not_judged", list, "a list") or []):
        _want(isinstance(c, Mapping), f"not_judged[{i}]", "a mapping", c)
        _want(isinstance(c.get("id"), str), f"not_judged[{i}].id", "a claim id", c.get("id"))
        _opt(c, "reason", f"not_judged[{i}].reason", str, "a sentence")
    for key, sec in (_opt(study, "sections", "sections", Mapping, "a mapping") or {}).items():
        f = f"sections.{key}"
        _want(sec is None or isinstance(sec, Mapping), f, "a mapping", sec)
        if sec is None:
            continue
        _opt(sec, "title", f"{f}.title", str, "a string")
        _opt(sec, "status", f"{f}.status", str, "a string")
        _opt(sec, "numbers", f"{f}.numbers", Mapping, "a mapping")
        _opt(sec, "notes", f"{f}.notes", list, "a list")
        figs = _opt(sec, "figures", f"{f}.figures", Mapping, "a mapping of name to PNG path") or {}
        for name, rel in figs.items():
            _want(isinstance(rel, str), f"{f}.figures.{name}", "a PNG path", rel)
        for j, t in enumerate(_opt(sec, "tables", f"{f}.tables", list, "a list") or []):
            _want(isinstance(t, Mapping), f"{f}.tables[{j}]", "a mapping", t)
            _opt(t, "columns", f"{f}.tables[{j}].columns", list, "a list")
            for r, row in enumerate(_opt(t, "rows", f"{f}.tables[{j}].rows", list, "a list") or []):
                _want(isinstance(row, list | tuple | Mapping), f"{f}.tables[{j}].rows[{r}]", "a list or a mapping",
                      row)
    _opt(study, "methods", "methods", Mapping, "a mapping")
    fails = _opt(study, "failures", "failures", Mapping, "a mapping")
    if fails is not None:
        for k in ("failed", "stages"):
            _want(isinstance(fails.get(k, 0), int) and not isinstance(fails.get(k, 0), bool), f"failures.{k}",
                  "an integer", fails.get(k))
        _opt(fails, "by_stage", "failures.by_stage", Mapping, "a mapping of stage to what happened")


__all__ = ["check_study"]
