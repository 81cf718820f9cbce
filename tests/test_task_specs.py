"""One task spec for training and evaluation: every loader as a training source, bare paths,
splits, label maps, seeded balancing, and messy delimiter-separated files (bad_rows, quote=)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from affectlens.errors import AffectlensError
from affectlens.tasks.loaders import load_rows, load_task
from affectlens.tasks.spec import parse_task
from affectlens.tasks.tables import sibling_split
from affectlens.tune.run import load_dataset, resolve_data

from conftest import DATA
from faults import assert_refused, run_cli

ROWS = [("I am furious about the car", "anger"), ("what a lovely morning", "joy"),
        ("the milk went off", "disgust"), ("my dog died", "sadness"), ("the bus is at nine", "neutral")]
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
SENT = {"anger": "negative", "joy": "positive", "disgust": "negative", "sadness": "negative", "neutral": "neutral"}


def _meld(path: Path, rows=ROWS) -> Path:
    lines = [MELD_HEADER] + [f'{i},"{t}",Ross,{lab.title()},{SENT[lab]},0,{i}\n' for i, (t, lab) in enumerate(rows)]
    path.write_text("".join(lines))
    return path


def _jsonl(path: Path, rows=ROWS, key: str = "label") -> Path:
    path.write_text("".join(json.dumps({"text": t, key: lab}) + "\n" for t, lab in rows))
    return path


def _csv(path: Path, rows=ROWS, header=("text", "label"), delim=",") -> Path:
    path.write_text(delim.join(header) + "\n" + "".join(f"{t}{delim}{lab}\n" for t, lab in rows))
    return path


def _goemotions(d: Path, rows=ROWS, split="train") -> Path:
    d.mkdir(exist_ok=True)
    names = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    (d / "labels.txt").write_text("\n".join(names) + "\n")
    (d / f"{split}.tsv").write_text("".join(f"{t}\t{names.index(lab)}\tid{i}\n" for i, (t, lab) in enumerate(rows)))
    return d


# ----------------------------------------------------------------------------- every loader trains


@pytest.mark.parametrize("kind", ["meld", "meld-sentiment", "goemotions", "jsonl", "csv", "sentiment", "bundled"])
def test_every_loader_is_a_training_source(tmp_path, kind):
    if kind == "meld":
        spec, want, task = f"meld:{_meld(tmp_path / 'm.csv')}", ROWS, "emotion"
    elif kind == "meld-sentiment":
        spec, want, task = (f"meld-sentiment:{_meld(tmp_path / 'm.csv')}", [(t, SENT[lab]) for t, lab in ROWS],
                            "sentiment")
    elif kind == "goemotions":
        spec, want, task = f"goemotions:{_goemotions(tmp_path / 'go')},split=train", ROWS, "emotion"
    elif kind == "jsonl":
        spec, want, task = f"jsonl:{_jsonl(tmp_path / 'd.jsonl')}", ROWS, "emotion"
    elif kind == "csv":
        path = _csv(tmp_path / "d.csv", header=("utterance", "emotion"))
        spec, want, task = f"csv:{path},text=utterance,label=emotion", ROWS, "emotion"
    elif kind == "sentiment":
        (tmp_path / "v.csv").write_text("text,score\ngood day,1.5\nbad day,-2\nso so,0\nfine,0.2\n")
        spec, want, task = (f"sentiment:{tmp_path / 'v.csv'}",
                            [("good day", "positive"), ("bad day", "negative"), ("fine", "positive")], "sentiment")
    else:
        spec, task = "emotion_train", "emotion"
        want = [(json.loads(ln)["text"], json.loads(ln)["label"]) for ln in resolve_data(spec).read_text().splitlines()]
    ds = load_dataset(spec)
    assert [(r["text"], r["label"]) for r in ds.rows] == want
    assert ds.task_kind == task


def test_training_reads_a_split_dir_at_train_and_evaluation_at_test(tmp_path, capfd):
    d = tmp_path / "meld"
    d.mkdir()
    _meld(d / "train_sent_emo.csv", ROWS[:3])
    _meld(d / "dev_sent_emo.csv", ROWS[3:4])
    _meld(d / "test_sent_emo.csv", ROWS[4:])
    assert [(r["text"], r["label"]) for r in load_dataset(f"meld:{d}").rows] == ROWS[:3]
    assert resolve_data(f"meld:{d}") == d / "train_sent_emo.csv"
    assert load_rows(f"meld:{d}") == ROWS[4:]
    assert load_rows(f"meld:{d},split=validation") == ROWS[3:4]
    (d / "train_sent_emo.csv").unlink()
    capfd.readouterr()
    assert [(r["text"], r["label"]) for r in load_dataset(f"meld:{d}").rows] == ROWS[4:]  # what was given
    assert "no train split; training on its test split" in capfd.readouterr().err


def test_tune_cli_refuses_an_ambiguous_bare_path_in_one_line(tmp_path, capfd):
    bad = _csv(tmp_path / "odd.csv", header=("sentence", "utterance"))
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, "tune", "x", "--data", bad, "--modules", "gate_proj", "--out", out),
                          out=out, contains="cannot tell the kind")
    assert "sentence, utterance" in line and f"csv:{bad},text=COLUMN,label=COLUMN" in line


# ----------------------------------------------------------------------------- bare paths


def test_bare_paths_are_inferred_by_extension_and_header(tmp_path):
    cases = {
        _meld(tmp_path / "meld.csv"): "meld:meld.csv",
        _goemotions(tmp_path / "go", split="test") / "test.tsv": "goemotions:test.tsv",
        _csv(tmp_path / "plain.csv"): "csv:plain.csv",
        _csv(tmp_path / "named.csv", header=("Utterance_text", "x")): None,
        _csv(tmp_path / "cols.csv", header=("sentence", "emotion")): "csv:cols.csv,label=emotion,text=sentence",
        _csv(tmp_path / "pipes.csv", header=("text", "label"), delim="|"): "csv:pipes.csv,delimiter=|",
        _jsonl(tmp_path / "d.jsonl"): "jsonl:d.jsonl",
        _csv(tmp_path / "emory.csv", header=("Utterance", "Emotion")): "csv:emory.csv,label=Emotion,text=Utterance",
        _jsonl(tmp_path / "t.jsonl", key="label_text"): "jsonl:t.jsonl",
    }
    (tmp_path / "eb.csv").write_text("id,split,V,A,D,text\na,test,4.2,3,3,great\nb,test,1.5,3,3,awful\n")
    cases[tmp_path / "eb.csv"] = "sentiment:eb.csv,center=3,score=V"
    for path, name in cases.items():
        if name is None:
            with pytest.raises(AffectlensError, match="cannot tell the kind"):
                parse_task(str(path))
        else:
            assert parse_task(str(path)).name == name, path
    assert load_rows(str(tmp_path / "pipes.csv")) == ROWS
    assert [lab for _, lab in load_rows(str(tmp_path / "eb.csv"))] == ["positive", "negative"]
    assert load_rows(str(tmp_path / "go")) == ROWS  # a GoEmotions dir, read at test


def test_ambiguous_bare_path_names_what_it_saw_and_the_spec_to_use(tmp_path):
    p = _csv(tmp_path / "x.csv", header=("text", "label", "score"))
    with pytest.raises(AffectlensError) as e:
        parse_task(str(p))
    msg = str(e.value)
    assert "\n" not in msg and "columns text, label, score" in msg and f"csv:{p},text=COLUMN,label=COLUMN" in msg
    with pytest.raises(AffectlensError, match="extension '.xyz'"):
        parse_task(str(_csv(tmp_path / "x.xyz")))


# ----------------------------------------------------------------------------- splits


def test_sibling_split_across_files_dirs_columns_and_bundled(tmp_path):
    d = tmp_path / "dair"
    d.mkdir()
    _jsonl(d / "train.jsonl", ROWS[:2])
    _jsonl(d / "validation.jsonl", ROWS[1:3])
    _jsonl(d / "test.jsonl", ROWS[3:])
    test_file = parse_task(str(d / "test.jsonl"))
    assert load_rows(sibling_split(test_file, "train")) == ROWS[:2]
    assert load_rows(sibling_split(test_file, "dev")) == ROWS[1:3]
    assert sibling_split(test_file, "test") is None  # never the evaluated split
    as_dir = parse_task(f"jsonl:{d}")
    assert load_rows(as_dir) == ROWS[3:] and load_rows(sibling_split(as_dir, "train")) == ROWS[:2]
    assert sibling_split(as_dir, "test") is None
    lone = _jsonl(tmp_path / "lone.jsonl")
    assert sibling_split(parse_task(str(lone)), "train") is None
    col = tmp_path / "col.csv"
    col.write_text("text,label,split\n" + "".join(f"{t},{lab},{s}\n" for (t, lab), s in
                                                  zip(ROWS, ["train", "train", "dev", "test", "test"], strict=True)))
    on_test = parse_task(f"csv:{col},split=test")
    mosi = tmp_path / "label.csv"
    mosi.write_text("text,label,mode\n" + "".join(f"{t},{lab},{s}\n" for (t, lab), s in
                                                    zip(ROWS, ["train", "valid", "valid", "test", "train"], strict=True)))
    assert load_rows(f"csv:{mosi},split=dev,split_column=mode") == ROWS[1:3]
    assert load_rows(on_test) == ROWS[3:] and load_rows(sibling_split(on_test, "train")) == ROWS[:2]
    assert sibling_split(parse_task(f"csv:{col},split=dev"), "dev") is None
    assert sibling_split(parse_task("emotion"), "train").path == "emotion_train"
    assert sibling_split(parse_task("emotion"), "dev") is None
    with pytest.raises(AffectlensError, match="unknown split"):
        sibling_split(on_test, "holdout")


# ----------------------------------------------------------------------------- label maps


def test_label_maps_onto_the_basic_emotions(tmp_path):
    emory = [("yay", "Joyful"), ("grr", "Mad"), ("eek", "Scared"), ("calm", "Peaceful"), ("strong", "Powerful"),
             ("sob", "Sad"), ("ok", "Neutral")]
    p = _csv(tmp_path / "emory.csv", emory, header=("Utterance", "Emotion"))
    t = load_task(f"csv:{p},text=Utterance,label=Emotion,labelmap=emorynlp")
    assert [e.label for e in t.examples] == ["joy", "anger", "fear", "joy", "joy", "sadness", "neutral"]
    assert t.labels == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    go = _goemotions(tmp_path / "go", split="test")
    names = ["admiration", "annoyance", "nervousness", "grief", "curiosity", "neutral", "disgust"]
    (go / "labels.txt").write_text("\n".join(names) + "\n")
    (go / "test.tsv").write_text("".join(f"t{i}\t{i}\tc{i}\n" for i in range(len(names))))
    got = [lab for _, lab in load_rows(f"goemotions:{go},labelmap=goemotions-ekman")]
    assert got == ["joy", "anger", "fear", "sadness", "surprise", "neutral", "disgust"]
    iemo = _csv(tmp_path / "iemocap.csv", [("a", "ang"), ("b", "exc"), ("c", "fru"), ("d", "neu")],
                header=("transcription", "emotion"))
    t = load_task(f"csv:{iemo},text=transcription,label=emotion,labelmap=iemocap")
    assert [(e.text, e.label) for e in t.examples] == [("a", "anger"), ("b", "joy"), ("d", "neutral")] and t.dropped == 1
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"Joyful": "joy", "Mad": "anger", "Scared": None, "Peaceful": None, "Powerful": None,
                             "Sad": "sadness", "Neutral": "neutral"}))
    t = load_task(f"csv:{p},text=Utterance,label=Emotion,labelmap={m}")
    assert [e.text for e in t.examples] == ["yay", "grr", "sob", "ok"] and t.dropped == 3
    m.write_text(json.dumps({"Joyful": "joy"}))
    with pytest.raises(AffectlensError, match="does not map 'mad'"):
        load_task(f"csv:{p},text=Utterance,label=Emotion,labelmap={m}")
    with pytest.raises(AffectlensError, match="unknown labelmap 'nope'"):
        parse_task(f"csv:{p},labelmap=nope")


# ----------------------------------------------------------------------------- balancing


def test_balance_and_per_class_are_seeded_and_keep_file_order(tmp_path):
    rows = [(f"a{i}", "anger") for i in range(30)] + [(f"j{i}", "joy") for i in range(8)]
    rows += [(f"n{i}", "neutral") for i in range(12)]
    p = _jsonl(tmp_path / "d.jsonl", rows)
    bal = load_rows(f"jsonl:{p},balance=true,seed=1")
    assert Counter(lab for _, lab in bal) == {"anger": 8, "joy": 8, "neutral": 8}
    assert bal == sorted(bal, key=rows.index) and set(bal) <= set(rows)
    assert load_rows(f"jsonl:{p},balance=true,seed=1") == bal
    assert load_rows(f"jsonl:{p},balance=true,seed=2") != bal  # C(30,8) * C(12,8) draws: a repeat is ~1e-9
    cap = load_rows(f"jsonl:{p},per_class=10")
    assert Counter(lab for _, lab in cap) == {"anger": 10, "joy": 8, "neutral": 10}
    ds = load_dataset(f"jsonl:{p},per_class=5,seed=3")
    assert Counter(r["label"] for r in ds.rows) == {"anger": 5, "joy": 5, "neutral": 5}
    for bad in ("per_class=0", "per_class=x", "balance=maybe"):
        with pytest.raises(AffectlensError, match=bad.split("=")[0]):
            parse_task(f"jsonl:{p},{bad}")


# ----------------------------------------------------------------------------- messy files (ISEAR)


def _isear(path: Path, n: int = 260, pipe_rows=(5, 230), quote_row: int | None = None) -> Path:
    """An ISEAR-like ``|`` file: ID|EMOT|SIT|STATE; some SIT fields hold a ``|`` (or open a quote)."""
    emos = ["joy", "fear", "anger", "sadness", "disgust", "shame", "guilt"]
    lines = ["ID|EMOT|SIT|STATE\n"]
    for i in range(n):
        sit = f"situation {i}"
        if i in pipe_rows:
            sit = f"situation {i} | with a bar"
        if i == quote_row:
            sit = f'"When I said it {i}'
        lines.append(f"{i}|{emos[i % 7]}|{sit}|1\n")
    path.write_text("".join(lines))
    return path


def test_bad_rows_error_names_file_and_row(tmp_path):
    p = _isear(tmp_path / "isear.csv")
    with pytest.raises(AffectlensError) as e:
        load_task(f"csv:{p},delimiter=|,text=SIT,label=EMOT")
    assert str(e.value).startswith(f"{p}: row 7 has 5 fields, the header has 4") and "bad_rows=skip" in str(e.value)


def test_bad_rows_skip_and_report_drop_only_the_bad_rows(tmp_path, capfd):
    p = _isear(tmp_path / "isear.csv")
    skip = load_task(f"csv:{p},delimiter=|,text=SIT,label=EMOT,bad_rows=skip")
    assert len(skip.examples) == 258 and skip.skipped == 2
    assert skip.examples[-1].text == "situation 259"  # read past row 199 to the end
    assert "situation 5 | with a bar" not in {e.text for e in skip.examples}
    capfd.readouterr()
    rep = load_task(f"csv:{p},delimiter=|,text=SIT,label=EMOT,bad_rows=report")
    err = capfd.readouterr().err
    assert [e.text for e in rep.examples] == [e.text for e in skip.examples]
    assert "skipped 2 malformed row(s)" in err and "row 7 (5 fields)" in err and "row 232 (5 fields)" in err
    with pytest.raises(AffectlensError, match="bad_rows must be one of error|skip|report"):
        parse_task(f"csv:{p},bad_rows=ignore")


def test_a_quote_opening_a_field_no_longer_stops_the_file_silently(tmp_path):
    # csv read from an opening quote to the next one: the rest of the file became one field of row 199
    p = _isear(tmp_path / "isear.csv", n=300, pipe_rows=(), quote_row=197)
    t = load_task(f"csv:{p},delimiter=|,text=SIT,label=EMOT")  # the quote never closes: it is text
    assert len(t.examples) == 300 and t.examples[197].text == '"When I said it 197'
    assert t.examples[198].text == "situation 198" and t.examples[-1].text == "situation 299"
    t = load_task(f"csv:{p},delimiter=|,text=SIT,label=EMOT,quote=none")
    assert len(t.examples) == 300 and t.examples[197].text == '"When I said it 197'
    with pytest.raises(AffectlensError, match=r"columns ID, EMOT, SIT, STATE \(separated by '\|'\).*delimiter=\|"):
        parse_task(str(p))  # a bare path: the delimiter is sniffed and named in the spec to use


SURVEY = {  # id -> (the line's text field as written, the text it holds)
    1: ("plain text", "plain text"),
    2: ('"quoted | with a bar and ""inner"" quotes"', 'quoted | with a bar and "inner" quotes'),
    3: ('He said "no way', 'He said "no way'),
    4: ('I "love" it', 'I "love" it'),
    5: ('"abc" def', '"abc" def'),
    6: ('"never closed on its line', '"never closed on its line'),
    7: ('later "x', 'later "x'),
    8: ('said no"', 'said no"'),
    9: ('"two\nlines"', "two\nlines"),
    10: ('""', ""),
    11: ('"ends ""quoted"""', 'ends "quoted"'),
    12: ('"a stray opener', '"a stray opener'),
    13: ('that closes"', 'that closes"'),
}


def test_survey_file_with_quotes_in_text_loads_every_row(tmp_path):
    """``|`` fields, properly quoted texts beside stray quotes: every row loads with its own text."""
    p = tmp_path / "survey.csv"
    p.write_text("id|text|score\n" + "".join(f"{i}|{raw}|{i / 2}\n" for i, (raw, _) in SURVEY.items()))
    rows = load_rows(f"csv:{p},delimiter=|,text=text,label=id")
    assert rows == [(text, str(i)) for i, (_, text) in SURVEY.items()]
    assert [e.text for e in load_task(f"csv:{p},delimiter=|,text=text,label=score").examples][-2:] == [
        '"a stray opener', 'that closes"']  # a lone quote that closes right before '|' merges no rows


@pytest.mark.parametrize(("body", "texts"), [
    ('"Hi\nthere",joy\n"open,joy\nsaid no",anger\nok,joy\n', ["Hi\nthere", '"open', 'said no"', "ok"]),
    ('1,"Hi\r\nthere"\r\n2,"open\r\n3,z"\r\n', ["Hi\r\nthere", '"open', 'z"']),
])
def test_a_quoted_field_spans_lines_only_when_no_two_rows_merge(tmp_path, body, texts):
    p = tmp_path / "t.csv"
    p.write_bytes((("text,label\n" if body[0] == '"' else "label,text\r\n") + body).encode())
    assert [t for t, _ in load_rows(f"csv:{p}")] == texts


# ----------------------------------------------------------------------------- the shared real data sets


def test_shared_data_sets_by_bare_path_and_their_train_splits():
    dair = parse_task(str(DATA / "dair-emotion"))
    assert dair.name == "jsonl:dair-emotion" and len(load_task(dair).examples) == 2000  # the test split
    train = sibling_split(dair, "train")
    assert len(load_rows(train)) == 16000 and len(load_rows(sibling_split(dair, "dev"))) == 2000
    capped = train.with_options(per_class=3)
    assert capped.name == "jsonl:dair-emotion,per_class=3,split=train"
    ds = load_dataset(capped)  # a TaskSpec trains as its text does
    assert Counter(r["label"] for r in ds.rows) == dict.fromkeys(("sadness", "joy", "love", "anger", "fear",
                                                                  "surprise"), 3)
    assert parse_task(str(DATA / "goemotions" / "ekman")).name == "goemotions:ekman"
    assert parse_task(str(DATA / "emobank" / "emobank.csv")).name == "sentiment:emobank.csv,center=3,score=V"


@pytest.mark.parametrize("text", ["emotion", "emotion_test", "jsonl:{dair},split=dev",
                                  "csv:{emobank},text=text,label=V"])
def test_spec_text_parses_back_to_the_same_spec(text):
    """A spec's display name keeps only a path's last part; spec_text must name the same data everywhere."""
    from affectlens.study.scored import dev_task
    from affectlens.tasks.spec import spec_text

    spec = parse_task(text.format(dair=DATA / "dair-emotion", emobank=DATA / "emobank" / "emobank.csv",
                                  goemotions=DATA / "goemotions"))
    again = parse_task(spec_text(spec))
    assert again == spec and again.path == spec.path
    if spec.option("split") == "dev":  # the study scores a task's dev split by this text, from any folder
        assert parse_task(dev_task(spec_text(spec.with_options(split="test")))).path == spec.path


def test_drop_train_rows_drops_exactly_the_texts_the_train_split_holds(tmp_path):
    """Real sets repeat texts across splits; drop_train_rows=true scores none of them (normalised as the
    train-overlap check normalises: case, Unicode form and whitespace)."""
    import json as _json

    from affectlens.tasks.loaders import load_task
    from affectlens.tasks.trained import normalise

    d = tmp_path / "set"
    d.mkdir()
    train = [{"text": f"train row {i}", "label": "a" if i % 2 else "b"} for i in range(6)]
    test = [{"text": "TRAIN  row 1", "label": "a"}, {"text": "fresh row", "label": "b"},
            {"text": "train row 4 ", "label": "b"}, {"text": "other", "label": "a"}]
    for name, rows in (("train", train), ("test", test)):
        (d / f"{name}.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = load_task(f"jsonl:{d},split=test,drop_train_rows=true")
    want = [r["text"] for r in test if normalise(r["text"]) not in {normalise(t["text"]) for t in train}]
    assert [e.text for e in got.examples] == want == ["fresh row", "other"] and got.dropped == 2
    assert len(load_task(f"jsonl:{d},split=test").examples) == 4  # off by default
    # the test spec's per_class samples the test rows, never the train rows they are checked against
    capped = load_task(f"jsonl:{d},split=test,drop_train_rows=true,per_class=1")
    assert [e.text for e in capped.examples] == want and capped.dropped == 2
    with pytest.raises(AffectlensError, match="train split would drop every row"):
        load_task(f"jsonl:{d},split=train,drop_train_rows=true")
    (d / "train.jsonl").unlink()
    with pytest.raises(AffectlensError, match="needs a train split"):
        load_task(f"jsonl:{d},split=test,drop_train_rows=true")
