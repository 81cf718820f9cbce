"""Reading delimiter-separated and JSONL data files into rows, strictly but recoverably.

Real files are messy: ISEAR's ``|``-separated file has ``|`` inside its
free-text field on some rows (a row with the wrong number of fields is an
error naming the file and row; ``bad_rows=skip|report`` drops such rows
instead, counted), and survey exports put quotes in free text both ways: as
properly quoted fields (``"a | b"``, ``""`` for a quote) and as stray quotes
(``He said "no way``, ``I "love" it``). csv's reader reads from a stray
opening quote to the next quote -- often many rows later -- as one field, so
rows with quotes were lost or merged. The reading here is tolerant instead:
a field is quoted only when it *starts* with the quote and a lone quote
closes it right before a delimiter or the line's end; every other quote is
text. A quoted field may span lines (standard CSV), but never merges two
lines that would each be a complete row: then its opening quote is text too.

One field holds at most ``FIELD_LIMIT`` characters (a binary file, or a
quoted field that would run on past it, stops there instead of handing a
50 MB "text" to the tokenizer). csv's own default, 128 KiB, is too small for
a long transcript.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
    q = None if quote is not None and quote.lower() == "none" else quote or '"'
    if q == delim:
        raise AffectlensError(f"{path}: the quote and the delimiter are both {q!r}")
    records = _Records(text, delim, q)
    header = records.header()
    if header is None:
        raise AffectlensError(f"{path} has no header row")
    names = [f.strip() for f in header]
    n = len(names)
    kept: list[Row] = []
    for i, fields in enumerate(records.rows(n), 2):
        if any(len(f) > FIELD_LIMIT for f in fields):
            raise AffectlensError(f"{path}: row {i} has a field over the limit of {FIELD_LIMIT:,} characters "
                                  "(is it a text file?)")
        if len(fields) == n:
            kept.append(Row(dict(zip(names, fields, strict=True)), f"row {i}"))
            continue
        if bad_rows == "error":
            raise AffectlensError(f"{path}: row {i} has {len(fields)} fields, the header has {n} (a "
                                  f"delimiter or quote inside a field? bad_rows=skip|report drops such rows)")
        skipped = SKIPPED.get()
        if skipped is not None:
            skipped.append(f"{path.name} row {i} ({len(fields)} fields)")
    return kept


_EOL = re.compile(r"(\r\n|\r|\n)")


class _Records:
    """The records of a delimited text, read with tolerant quoting (see the module's docstring)."""

    def __init__(self, text: str, delim: str, q: str | None) -> None:
        pieces = _EOL.split(text)
        self.lines, self.seps = pieces[0::2], pieces[1::2]  # each line's own terminator, kept in fields
        self.delim, self.q = delim, q
        self.at = 0

    def header(self) -> list[str] | None:
        while self.at < len(self.lines) and not self.lines[self.at]:
            self.at += 1
        if self.at == len(self.lines):
            return None
        self.at += 1
        return self.fields(self.lines[self.at - 1], 0, literal_open=True)[0]

    def rows(self, n: int) -> Iterator[list[str]]:
        """Each non-blank record after the header."""
        while self.at < len(self.lines):
            if not self.lines[self.at]:
                self.at += 1
                continue
            fields, self.at = self.record(self.at, n)
            yield fields

    def fields(self, line: str, start: int, literal_open: bool) -> tuple[list[str], int | None]:
        """The fields of ``line`` from ``start``, and where a quoted field still open at the line's end
        opens (None when none is, or when ``literal_open`` makes such a quote text)."""
        q, delim = self.q, self.delim
        if q is None or line.find(q, start) < 0:
            return line[start:].split(delim), None
        out: list[str] = []
        i = start
        while True:
            if line.startswith(q, i):
                j = i + 1
                while (j := line.find(q, j)) >= 0 and line.startswith(q, j + 1):
                    j += 2  # "" inside a quoted field
                if j < 0 and not literal_open:
                    return out, i
                if j >= 0 and (j + 1 == len(line) or line[j + 1] == delim):
                    out.append(line[i + 1:j].replace(q + q, q))
                    if j + 1 == len(line):
                        return out, None
                    i = j + 2
                    continue
            e = line.find(delim, i)  # unquoted, or a quote that does not close where a field ends: text
            if e < 0:
                out.append(line[i:])
                return out, None
            out.append(line[i:e])
            i = e + 1

    def record(self, first: int, n: int) -> tuple[list[str], int]:
        """The fields of the record starting at line ``first``, and the line after it."""
        line = self.lines[first]
        fields, at = self.fields(line, 0, literal_open=False)
        k = first
        while at is not None:
            closed = self.close(k, at)
            if closed is None:
                break
            value, k, after = closed
            fields.append(value)
            at = None
            if after < len(self.lines[k]):  # the closing quote is followed by a delimiter
                more, at = self.fields(self.lines[k], after + 1, literal_open=False)
                fields += more
        if at is None and (k == first or (len(fields) == n and self.whole_rows(first, k, n) < 2)):
            return fields, k + 1
        return self.fields(line, 0, literal_open=True)[0], first + 1

    def close(self, k: int, at: int) -> tuple[str, int, int] | None:
        """A quoted field opened at ``lines[k][at]`` and open at that line's end, closed on a later line:
        its value, that line and the offset after its closing quote; None when a quote that does not
        close a field comes first, or no quote within ``FIELD_LIMIT`` characters."""
        q = self.q
        assert q is not None
        parts = [self.lines[k][at + 1:]]
        size = len(parts[0])
        for m in range(k + 1, len(self.lines)):
            parts.append(self.seps[m - 1])
            line = self.lines[m]
            j = 0
            while (j := line.find(q, j)) >= 0 and line.startswith(q, j + 1):
                j += 2
            if j >= 0:
                if j + 1 < len(line) and line[j + 1] != self.delim:
                    return None
                parts.append(line[:j])
                return "".join(parts).replace(q + q, q), m, j + 1
            parts.append(line)
            size += len(line) + 1
            if size > FIELD_LIMIT:
                return None
        return None

    def whole_rows(self, first: int, last: int, n: int) -> int:
        """How many of lines ``first..last`` would each be a complete row of ``n`` fields on their own."""
        return sum(len(self.fields(self.lines[m], 0, literal_open=True)[0]) == n for m in range(first, last + 1))


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
