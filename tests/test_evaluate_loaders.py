"""Loaders on fixture files (messy MELD, GoEmotions, JSONL, CSV, valence) and on the real data."""

from __future__ import annotations

import json

import pytest

from affectlens.errors import AffectlensError
from affectlens.evaluate import get_task, load_examples, load_task, parse_task

from conftest import DATA

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def write_meld(path, extra_rows: bytes = b"") -> None:
    rows = (
        MELD_HEADER.encode()
        + '1,"“Oh my God, you’re back!”",Rachel,surprise,positive,0,0,3,19,00:14:38,00:14:40\n'.encode()
        + b"2,I\x92m fine. Really,Ross,Neutral,neutral,0,1,3,19,00:14:41,00:14:42\n"  # cp1252 stray byte
        + "3,\"Iâ\x80\x99m so mad, I could scream\",Monica,anger,negative,1,0,3,20,0,1\n".encode()
        + b'4,"He said ""no"".",Joey,sadness,negative,1,1,3,20,0,1\n'
        + extra_rows
    )
    path.write_bytes(rows)


def test_meld_curly_quotes_and_stray_bytes(tmp_path):
    p = tmp_path / "meld.csv"
    write_meld(p)
    t = load_task(f"meld:{p}")
    texts = [e.text for e in t.examples]
    assert [e.label for e in t.examples] == ["surprise", "neutral", "anger", "sadness"]
    assert texts[0] == "“Oh my God, you’re back!”"
    assert texts[1] == "I\ufffdm fine. Really"  # the stray byte is kept visible, not dropped
    assert texts[2] == "Iâ\x80\x99m so mad, I could scream"  # mojibake read as it is
    assert texts[3] == 'He said "no".'
    s = load_task(f"meld-sentiment:{p}")
    assert [e.label for e in s.examples] == ["positive", "neutral", "negative", "negative"]
    assert [e.score for e in s.examples] == [1.0, 0.0, -1.0, -1.0]
    assert s.labels == ("negative", "neutral", "positive")


def test_ragged_csv_row_is_an_error(tmp_path):
    p = tmp_path / "meld.csv"
    write_meld(p, "7,Oh my God, you’re back!,Rachel,surprise,positive,0,0,3,19,0,1\n".encode())
    with pytest.raises(AffectlensError, match="row 6 has 12 fields"):
        load_task(f"meld:{p}")


def test_unknown_labels_are_listed_not_dropped(tmp_path):
    p = tmp_path / "meld.csv"
    write_meld(p, b"5,Hm.,Phoebe,confused,neutral,2,0,3,21,0,1\n6,Ok.,Phoebe,confused,neutral,2,1,3,21,0,1\n")
    with pytest.raises(AffectlensError, match=r"'confused' \(2x\)"):
        load_task(f"meld:{p}")


def test_goemotions_fixture_multi_label(tmp_path):
    (tmp_path / "labels.txt").write_text("anger\njoy\nneutral\n")
    (tmp_path / "test.tsv").write_text("I love it\t1\ta1\nugh\t0,1\ta2\nok then\t2\ta3\n", encoding="utf-8")
    single = load_task(f"goemotions:{tmp_path}")
    assert [e.label for e in single.examples] == ["joy", "neutral"] and single.dropped == 1
    first = load_task(f"goemotions:{tmp_path},multi=first")
    assert [e.label for e in first.examples] == ["joy", "anger", "neutral"]
    (tmp_path / "dev.tsv").write_text("x\t7\tb\n")
    with pytest.raises(AffectlensError, match="outside labels.txt"):
        load_task(f"goemotions:{tmp_path},split=dev")


def test_jsonl_csv_and_sentiment_fixtures(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [
        {"text": "a", "label": 0, "label_text": "Joy"}, {"text": "b", "label": 1, "label_text": "fear"}]))
    assert [(e.text, e.label) for e in load_examples(f"jsonl:{j}")] == [("a", "joy"), ("b", "fear")]
    with pytest.raises(AffectlensError, match="'fear'"):
        load_task(f"jsonl:{j},labels=joy|anger")
    c = tmp_path / "d.tsv"
    c.write_text("utt\temo\nhello\tjoy\nbye\tsadness\n")
    t = load_task(f"csv:{c},text=utt,label=emo")
    assert t.labels == ("joy", "sadness") and t.examples[1].text == "bye"
    v = tmp_path / "v.csv"
    v.write_text("split,text,V\ntest,good,3.4\ntest,meh,3.0\ntest,bad,2.2\ntrain,x,4\n")
    s = load_task(f"sentiment:{v},score=V,center=3,split=test")
    assert [(e.text, e.label) for e in s.examples] == [("good", "positive"), ("bad", "negative")]
    assert s.dropped == 1 and s.examples[1].score == pytest.approx(-0.8)
    m = load_task(f"sentiment:{v},score=V,center=3,margin=0.5")
    assert [e.text for e in m.examples] == ["bad", "x"]
    three = load_task(f"sentiment:{v},score=V,center=3,margin=0.5,labels3=1")
    assert [e.label for e in three.examples] == ["neutral", "neutral", "negative", "positive"]
    assert three.labels == ("negative", "neutral", "positive") and three.dropped == 0
    js = tmp_path / "s.jsonl"
    js.write_text('{"text": "yay", "label": "positive"}\n{"text": "meh", "label": "neutral"}\n')
    cat = load_task(f"jsonl:{js},kind=sentiment")
    assert [e.score for e in cat.examples] == [1.0, 0.0]


@pytest.mark.parametrize("spec,match", [
    ("csv:{d}/d.tsv,text=nope", "no text column 'nope'"),
    ("csv:{d}/empty.csv", "is empty"),
    ("csv:{d}/missing.csv", "does not exist"),
    ("meld:{d}/d.tsv", "no text column 'Utterance'"),
    ("sentiment:{d}/d.tsv,text=utt,score=emo", "is not a number"),
    ("jsonl:{d}/d.tsv,colour=red", "unknown option"),
    ("bogus:{d}/x", "unknown task kind"),
    ("nosuchtask", "unknown task"),
])
def test_bad_specs(tmp_path, spec, match):
    (tmp_path / "d.tsv").write_text("utt\temo\nhello\tjoy\n")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(AffectlensError, match=match):
        load_task(spec.format(d=tmp_path))


def test_hand_built_spec_without_path_is_a_user_error():
    from affectlens.tasks.loaders import Example
    from affectlens.tasks.spec import TaskSpec

    with pytest.raises(AffectlensError, match="no data path"):
        load_task(TaskSpec(name="mine", kind="emotion", loader="csv"))
    assert Example("hi", label="joy").gold == "joy"
    with pytest.raises(AffectlensError, match="has no label"):
        _ = Example("a perplexity text").gold


def test_bundled_tasks_registered():
    assert get_task("emotion").loader == "bundled"
    e = load_task("emotion")
    assert set(e.labels) == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert len(e.examples) > 50 and {x.label for x in e.examples} == set(e.labels)
    c = load_task("control", limit=5)
    assert len(c.examples) == 5 and all(x.label.isdigit() for x in c.examples)


def test_real_files():
    go = load_task(f"goemotions:{DATA / 'goemotions' / 'ekman'}")
    assert go.labels == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    raw_rows = (DATA / "goemotions" / "ekman" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert len(go.examples) + go.dropped == len(raw_rows) == 5427
    assert go.dropped == sum("," in r.split("\t")[1] for r in raw_rows)
    dair = load_task(f"jsonl:{DATA / 'dair-emotion' / 'test.jsonl'}")
    assert len(dair.examples) == 2000 and "love" in dair.labels and len(dair.labels) == 6
    first = json.loads((DATA / "dair-emotion" / "test.jsonl").read_text().splitlines()[0])
    assert dair.examples[0].label == first["label_text"]
    eb = load_task(f"sentiment:{DATA / 'emobank' / 'emobank.csv'},score=V,center=3,split=test")
    assert eb.labels == ("negative", "positive")
    assert all((e.label == "positive") == (e.score > 0) for e in eb.examples)
    assert eb.dropped > 0 and len(eb.examples) + eb.dropped == 1000


def test_spec_names_and_options():
    s = parse_task("sentiment:/x/emobank.csv,score=V,center=3")
    assert s.name == "sentiment:emobank.csv,center=3,score=V"
    assert s.option("score") == "V" and s.path == "/x/emobank.csv"
