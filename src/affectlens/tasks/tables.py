"""Reading delimiter-separated and JSONL data files into rows, strictly but recoverably.

Real files are messy: ISEAR's ``|``-separated file has ``|`` inside its
free-text field on some rows, and a field that *starts* with a quote makes
the csv module read everything up to the next quote -- often the rest of the
file -- as one field, so a file silently "stops" at that row. Both are
caught here: a row with the wrong number of fields is an error naming the
file and row (``bad_rows=skip|report`` drops such rows instead, counted), and
a quoted field that swallows lines which look like rows of their own is an
error that says to pass ``quote=none``.

One field holds at most ``FIELD_LIMIT`` characters, enforced by the csv
reader as it reads (a quote that never closes, or a binary file, stops there
instead of handing a 50 MB "text" to the tokenizer). csv's own default,
128 KiB, is too small for a long transcript.
"""

from __future__ import annotations

import csv
import io
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path

from ..errors import AffectlensError
from ..runs import parse_jsonl_lines
from .spec import _KIND_OF_LOADER, TaskSpec, _short
from .splits import canonical_split, sibling_file, split_file, split_of_name

# Characters in one field: far beyond any model's context (~2M tokens), far below a runaway quote's file.
FIELD_LIMIT = 8 * 2**20
# Rows dropped under bad_rows=skip|report while one task loads (set by loaders.load_task).
SKIPPED: ContextVar[list[str] | None] = ContextVar("affectlens_skipped_rows", default=None)


class Row(dict):
    """One data row; ``where`` says where it sits in its file (``line 3``, ``row 3``)."""

    __slots__ = ("where",)

    def __init__(self, data: dict, where: str) -> None:
        super().__init__(data)
        self.where = where


def read_text(path: Path) -> str:
    if not path.exists():
        raise AffectlensError(f"data file {path} does not exist")
    if path.is_dir():
        raise AffectlensError(f"{path} is a directory, expected a file")
    raw = path.read_bytes()
    if not raw or raw.isspace():  # (not strip(): no copy of a large file)
        raise AffectlensError(f"data file {path} is empty")
    return raw.decode("utf-8-sig", errors="replace")


def spec_path(spec: TaskSpec) -> str:
    """The task's data path; a TaskSpec built by hand (not by parse_task) may lack one."""
    if spec.path is None:
        raise AffectlensError(f"task {spec.name}: no data path (loader '{spec.loader}' reads a file)")
    return spec.path


def data_file(spec: TaskSpec, exts: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json")) -> Path:
    """The file a spec reads: its path, or in a directory the file named after ``split`` (default test)."""
    p = Path(spec_path(spec))
    if spec.loader == "bundled":
        from .corpus import bundled_path

        return bundled_path(str(spec.path))
    if not p.is_dir():
        return p
    split = spec.option("split", "test")
    f = split_file(p, split, exts)
    if f is None:
        seen = ", ".join(x.name for x in sorted(p.iterdir()) if x.is_file()) or "no files"
        raise AffectlensError(f"{p}: no file for split '{split}' (seen: {seen})")
    return f


def _delimiter(path: Path, delimiter: str | None) -> str:
    if delimiter in ("tab", "\\t"):
        delimiter = "\t"
    delim = delimiter or ("\t" if path.suffix == ".tsv" else ",")
    if len(delim) != 1:
        raise AffectlensError(f"{path}: delimiter must be one character (or 'tab'), not {delim!r}")
    return delim


def read_rows(path: Path, delimiter: str | None = None, quote: str | None = None,
              bad_rows: str = "error") -> list[Row]:
    """CSV/TSV (by extension or ``delimiter``) or JSONL rows as dicts, each knowing its line/row.

    ``quote``: the quote character (default ``"``), or ``none`` when quotes are
    plain text. ``bad_rows``: ``error`` (default), or ``skip``/``report`` to drop
    rows whose field count differs from the header's (recorded in ``SKIPPED``).
    """
    text = read_text(path)
    if path.suffix in (".jsonl", ".json"):
        return [Row(r, f"line {i}") for i, r in parse_jsonl_lines(text, path)]
    delim = _delimiter(path, delimiter)
    if quote is not None and quote.lower() != "none" and len(quote) != 1:
        raise AffectlensError(f"{path}: quote must be one character or 'none', not {quote!r}")
    stream = io.StringIO(text, newline="")
    if quote is not None and quote.lower() == "none":
        reader = csv.DictReader(stream, delimiter=delim, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.DictReader(stream, delimiter=delim, quotechar=quote or '"')
    rows: list[Row] = []
    spans: list[tuple[int, int]] = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(FIELD_LIMIT)  # the reader stops at the limit, not after the field
    try:
        if not reader.fieldnames:
            raise AffectlensError(f"{path} has no header row")
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
        prev = reader.line_num
        for i, row in enumerate(reader, 2):
            rows.append(Row(row, f"row {i}"))
            spans.append((prev + 1, reader.line_num))
            prev = reader.line_num
    except csv.Error as e:
        if "field limit" in str(e):
            raise AffectlensError(f"{path}: row {len(rows) + 2} has a field over the limit of {FIELD_LIMIT:,} "
                                  "characters (a quote that never closes? quote=none reads quotes as text)") from None
        raise AffectlensError(f"{path}: row {len(rows) + 2} (line {reader.line_num}) is not valid "
                              f"CSV: {e}") from None
    finally:
        csv.field_size_limit(old_limit)
    n = len(reader.fieldnames)
    _runaway_quote(path, rows, spans, delim, n)
    kept: list[Row] = []
    for row in rows:
        if None in row or None in row.values():  # csv's markers for too many / too few fields
            got = n + len(row.get(None) or ()) - sum(v is None for v in row.values())
            if bad_rows == "error":
                raise AffectlensError(f"{path}: {row.where} has {got} fields, the header has {n} (a "
                                      f"delimiter or quote inside a field? bad_rows=skip|report drops such rows)")
            skipped = SKIPPED.get()
            if skipped is not None:
                skipped.append(f"{path.name} {row.where} ({got} fields)")
            continue
        kept.append(row)
    return kept


def _runaway_quote(path: Path, rows: list[Row], spans: list[tuple[int, int]], delim: str, n: int) -> None:
    """A quoted field spanning lines that hold ``n - 1`` delimiters each has eaten rows: refuse it."""
    for row, (first, last) in zip(rows, spans, strict=True):
        if last <= first:
            continue
        for key, value in row.items():
            if isinstance(value, str) and "\n" in value:
                eaten = [ln for ln in value.split("\n")[1:] if ln.count(delim) >= max(n - 1, 1)]
                if eaten:
                    raise AffectlensError(
                        f"{path}: {row.where}: a quote opening field '{key}' on line {first} runs to line {last}, "
                        f"swallowing {len(eaten)} line(s) that look like rows; if quotes are plain text in "
                        "this file pass quote=none")


def read_table(spec: TaskSpec) -> list[Row]:
    """Every row of a spec's data file under its table options (no split filter)."""
    return read_rows(data_file(spec), spec.option("delimiter"), spec.option("quote"),
                     spec.option("bad_rows", "error").lower())


def split_filter(rows: list[Row], spec: TaskSpec, path: Path) -> list[Row]:
    """The rows of ``split``: all of a file named after it, else those whose split column
    (``split_column=``, default ``split``) says it (``valid``/``validation`` count as dev)."""
    split = spec.option("split")
    if split is None:
        return rows
    col = spec.option("split_column", "split")
    named = split_of_name(path)
    if rows and col not in rows[0] and named is not None:
        if named != canonical_split(split):
            raise AffectlensError(f"{path} holds the {named} split, not '{split}'")
        return rows
    if rows and col not in rows[0]:
        cols = ", ".join(str(c) for c in rows[0])
        raise AffectlensError(f"{path}: no split column '{col}' (columns: {cols}) and its name says no split")
    out = []
    for r in rows:
        try:
            if canonical_split(str(r[col]).strip()) == split:
                out.append(r)
        except AffectlensError:
            continue
    return out


def sibling_split(spec: TaskSpec, split: str) -> TaskSpec | None:
    """The same data set's ``split`` (train/dev/test) as a spec, or None when the data has no such split.

    Few-shot examples and training rows come from here, so they can never be
    the evaluated split: the sibling of a spec for ``split`` other than its
    own reads other rows (another file, or other values of a ``split`` column).
    """
    split = canonical_split(split)
    if spec.loader == "bundled":
        from .corpus import NAMES

        stem = str(spec.path).rsplit("_", 1)[0]
        target = f"{stem}_{split}"
        if target not in NAMES or target == spec.path:
            return None
        return replace(spec, name=target + "".join(f",{k}={v}" for k, v in spec.options), path=target)
    if spec.path is None or spec.loader not in _KIND_OF_LOADER or spec.loader in ("text", "pairs"):
        return None
    p = Path(spec.path)
    own = spec.option("split")
    opts = dict(spec.options)
    kind_key = _KIND_OF_LOADER[spec.loader]
    if p.is_dir():
        has = (p / f"{split}.tsv").is_file() if spec.loader == "goemotions" else split_file(p, split) is not None
        if not has or own == split or (own is None and split == "test"):
            return None  # a directory is read as its test split when none is named
        opts["split"] = split
        return replace(spec, name=_short(kind_key, spec.path, opts), options=tuple(sorted(opts.items())))
    if own is not None and split_of_name(p) is None:  # one file, a 'split' column
        if own == split or split not in split_values(spec):
            return None
        opts["split"] = split
        return replace(spec, name=_short(kind_key, spec.path, opts), options=tuple(sorted(opts.items())))
    if split_of_name(p) == split:
        return None
    other = sibling_file(p, split)
    if other is None:
        return None
    opts.pop("split", None)
    return replace(spec, name=_short(kind_key, str(other), opts), path=str(other),
                   options=tuple(sorted(opts.items())))


def split_values(spec: TaskSpec) -> set[str]:
    """The canonical splits named in a file's split column (empty without one)."""
    rows = read_table(spec)
    col = spec.option("split_column", "split")
    if not rows or col not in rows[0]:
        return set()
    out = set()
    for r in rows:
        try:
            out.add(canonical_split(str(r[col])))
        except AffectlensError:
            continue
    return out


__all__ = ["FIELD_LIMIT", "SKIPPED", "Row", "data_file", "read_rows", "read_table", "read_text", "spec_path", "sibling_split", "split_filter", "split_values"]
