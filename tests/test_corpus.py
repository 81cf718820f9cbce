"""The bundled data are exactly what corpus.py writes, balanced, and split without leakage."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.tasks import corpus

FILES = ("emotion_train.jsonl", "emotion_test.jsonl", "control_train.jsonl", "control_test.jsonl",
         "control_eval.jsonl", "pairs.jsonl", "README.md")


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in corpus.bundled_path(name).read_text(encoding="utf-8").splitlines()]


def test_regenerating_gives_byte_identical_files(tmp_path):
    corpus.main(["--out", str(tmp_path)])
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (corpus.DATA_DIR / name).read_bytes(), name


def test_emotion_splits_are_balanced_and_sized():
    train, test = _rows("emotion_train"), _rows("emotion_test")
    assert Counter(r["label"] for r in train) == {lab: 42 for lab in corpus.EMOTIONS}
    assert Counter(r["label"] for r in test) == {lab: 20 for lab in corpus.EMOTIONS}
    assert all(set(r) == {"text", "label"} and r["text"].strip() for r in train + test)


def test_emotion_splits_are_text_and_event_disjoint():
    train, test = _rows("emotion_train"), _rows("emotion_test")
    tr_texts, te_texts = [r["text"] for r in train], [r["text"] for r in test]
    assert len(set(tr_texts)) == len(tr_texts) and len(set(te_texts)) == len(te_texts)
    assert not set(tr_texts) & set(te_texts)

    # Each text comes from exactly one event; no event serves both splits.
    def events_of(text: str, label: str) -> set[str]:
        low = text.lower()
        hits = set()
        for ev in corpus.EVENTS[label]:
            tail = ev.split("{who}")[-1].strip().lower()
            if tail and tail in low:
                hits.add(ev)
        return hits

    tr_ev: set[str] = set()
    te_ev: set[str] = set()
    for rows, acc in ((train, tr_ev), (test, te_ev)):
        for r in rows:
            evs = events_of(r["text"], r["label"])
            assert evs, r
            acc.update(evs)
    assert not tr_ev & te_ev


def test_control_task_is_balanced_disjoint_and_correct():
    train, test, big = _rows("control_train"), _rows("control_test"), _rows("control_eval")
    assert len(train) == 300 and len(test) == 140 and len(big) == 600
    assert Counter(r["label"] for r in train) == {str(d): 30 for d in range(10)}
    assert Counter(r["label"] for r in test) == {str(d): 14 for d in range(10)}
    assert Counter(r["label"] for r in big) == {str(d): 60 for d in range(10)}
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    # the large control set: no text of train or test, no duplicate
    assert not {r["text"] for r in big} & {r["text"] for r in train + test}
    assert len({r["text"] for r in big}) == len(big)
    # The answers are right: solve every problem independently from its numbers and verbs.
    import re

    for r in train + test + big:
        t = r["text"]
        a, b = (int(x) for x in re.findall(r"\b\d+\b", t)[:2])
        if " gets " in t or " puts down " in t:
            want = a + b
        elif " gave away " in t or " takes out " in t:
            want = a - b
        elif " fills " in t:
            want = a * b
        else:
            assert " shares " in t, t
            assert a % b == 0
            want = a // b
        assert str(want) == r["label"], t


def test_pairs_share_the_event_and_cover_six_emotions():
    pairs = _rows("pairs")
    assert Counter(p["label"] for p in pairs) == {lab: 20 for lab in corpus.EMOTIONS if lab != "neutral"}
    for p in pairs:
        assert set(p) == {"emotional", "neutral", "label"} and p["emotional"] != p["neutral"]
        # Some event clause of the label (tail after the person slot) occurs in both texts.
        tails = [ev.split("{who}")[-1].strip().lower() for ev in corpus.EVENTS[p["label"]]]
        assert any(t in p["emotional"].lower() and t in p["neutral"].lower() for t in tails), p
    assert len({p["emotional"] for p in pairs}) == len(pairs)


def test_bundled_path_names_and_errors():
    assert corpus.bundled_path("emotion_train").name == "emotion_train.jsonl"
    assert corpus.bundled_path("pairs.jsonl").name == "pairs.jsonl"
    with pytest.raises(AffectlensError, match="unknown bundled data"):
        corpus.bundled_path("goemotions")


def test_readme_states_licence_and_generation():
    text = (corpus.DATA_DIR / "README.md").read_text()
    assert "Apache-2.0" in text and "python -m affectlens.tasks.corpus" in text


def test_bad_data_via_cli_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "joy"}\nnot json\n')
    rc = main(["tune", "x", "--data", str(bad), "--modules", "gate_proj", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "line 2" in err
