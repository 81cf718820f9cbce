"""Progress: timestamped lines in a log (5 % / 30 s), cost-weighted ETAs, a bar on a terminal, silence."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

from affectlens import progress as prog
from affectlens.grid import load_config
from affectlens.grid.eta import cell_costs, job_cost, score_cost, train_cost
from affectlens.grid.executors import adapter_dir

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d affectlens: (.*)$")


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class LogFile:
    """stderr sent to a file (not a terminal) inside ``with log:``; ``lines()`` reads it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "w+")  # noqa: SIM115 - closed by the fixture
        self._redirect = contextlib.redirect_stderr(self.file)

    def __enter__(self) -> LogFile:
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._redirect.__exit__(*exc)

    def lines(self) -> list[str]:
        self.file.flush()
        out = []
        for raw in self.path.read_text().splitlines():
            m = LINE.match(raw)
            assert m, f"not a timestamped progress line: {raw!r}"
            out.append(m.group(1))
        return out


@pytest.fixture
def log(tmp_path, monkeypatch):
    """Progress switched on (the suite silences it), stderr to a file while ``with log:`` runs."""
    monkeypatch.delenv("AFFECTLENS_NO_PROGRESS", raising=False)
    f = LogFile(tmp_path / "stderr.log")
    yield f
    f.file.close()


def test_ten_minute_evaluation_logs_a_line_per_5_percent_with_eta(log):
    clock = FakeClock()
    with log:
        bar = prog.Progress(200, "evaluate emotion", unit="ex", clock=clock)  # stderr: the log file
        assert bar.logging and bar.bar is None
        for _ in range(200):  # 3 s per example: 10 minutes
            clock.t += 3
            bar.update()
        bar.close()
    lines = log.lines()
    assert len(lines) >= 10  # the bar: a 10-minute run shows at least 10 lines
    *during, last = lines
    assert len(during) == 19  # 5 %, 10 %, ..., 95 %: every 10 examples = 30 s
    for k, text in enumerate(during, start=1):
        done = 10 * k
        left = (200 - done) * 3
        assert text == (f"evaluate emotion: {done}/200 ({5 * k} %) 3.0 s/ex, "
                        f"ETA 0:{left // 60:02d}:{left % 60:02d}")
    assert last == "evaluate emotion: 200/200 ex done in 0:10:00, 3.0 s/ex"


def test_batched_evaluation_heartbeat_keeps_a_line_every_30_s(log):
    """140 examples in batches of 16 over 10 minutes: 9 updates, yet the heartbeat
    (which the thread calls every 5 s; here the test does) keeps one line per 30 s."""
    clock = FakeClock()
    with log:
        bar = prog.Progress(140, "evaluate emotion", unit="ex", clock=clock)
        per_batch = 600 / 9
        done = 0
        while done < 140:
            for _ in range(13):  # 65 s of ticks while the batch runs
                clock.t += 5
                bar.tick()
            clock.t += per_batch - 65
            n = min(16, 140 - done)
            done += n
            bar.update(n)
        bar.close()
    lines = log.lines()
    assert len(lines) >= 20
    assert lines[0] == "evaluate emotion: 0/140 (0 %), ETA unknown"  # alive before the first batch ends
    assert lines[-1].startswith("evaluate emotion: 140/140 ex done in 0:10:00")


def test_30_s_rule_between_5_percent_steps_and_quiet_fast_loops(log):
    clock = FakeClock()
    with log:
        bar = prog.Progress(1000, "tensors", unit="tensor", clock=clock)
        for _ in range(160):  # 1 s each: 5 % = 50 s, so the 30 s rule fires in between
            clock.t += 1
            bar.update()
        bar.close()
    done = [int(re.match(r"tensors: (\d+)/", s).group(1)) for s in log.lines()]
    assert done == [30, 50, 80, 100, 130, 150, 160]  # 30 s, 5 %, 30 s, 10 %, ..., then the last line

    with log:
        fast = prog.Progress(500, "fast", clock=clock)  # all done within the 5 s minimum gap: no line at all
        for _ in range(500):
            clock.t += 0.001
            fast.update()
        fast.close()
    assert len(log.lines()) == 7


def test_cost_weighted_eta_equals_the_hand_computed_value(log):
    clock = FakeClock()
    # a cell that trains (cost 10) then four that only score (cost 1 each)
    bar = prog.Progress(5, "grid cells", unit="cell", weights=[10, 1, 1, 1, 1], clock=clock, stream=log.file)
    clock.t += 100
    bar.update()
    # 10 cost units took 100 s: the 4 left take 40 s (counting cells would say 400 s)
    assert bar.eta() == pytest.approx(40.0)
    assert bar.line() == "grid cells: 1/5 (71 % of the work) 100.0 s/cell, ETA 0:00:40"
    clock.t += 10
    bar.update(1, cost=1)  # an out-of-order finisher names its own cost
    assert bar.eta() == pytest.approx(3 * 110 / 11)

    cached = prog.Progress(3, "study adapters", weights=[5, 5, 5], clock=clock, stream=log.file)
    cached.skip()  # found on disk: counted, but neither in the work left nor in the pace
    clock.t += 50
    cached.update()
    assert cached.done == 2 and cached.fraction() == pytest.approx(0.5)
    assert cached.eta() == pytest.approx(50.0)
    bar.close()
    cached.close()
    assert log.lines()[0] == "grid cells: 1/5 (71 % of the work) 100.0 s/cell, ETA 0:00:40"


def test_grid_cells_cost_their_training_and_scoring(tmp_path):
    cfg = load_config({
        "name": "g", "base": str(tmp_path / "base"), "data": "emotion_train", "tasks": ["emotion", "control"],
        "eval": {"limit": 10},
        "budget": {"steps": 6, "rank": 2, "alpha": 4, "lr": 1e-2, "batch_size": 4, "max_length": 30,
                   "seeds": [0, 1]},
        "variants": [{"name": "base", "kind": "reference", "model": "base"},
                     {"name": "all", "kind": "reference", "modules": "all"},
                     {"name": "GET", "kind": "tune", "modules": "gate_proj"},
                     {"name": "inherit", "kind": "transfer", "donor": "all", "modules": "gate_proj"}]})
    score, train = 10 * 2, 6 * 4 * 0.74 * 30 / 60  # examples x tasks; steps x batch x (shorter texts)
    assert (score_cost(cfg), train_cost(cfg)) == (score, pytest.approx(train))
    get1 = adapter_dir(tmp_path, cfg.variant("GET"), 1)
    get1.mkdir(parents=True)
    (get1 / "adapter_config.json").write_text("{}")  # GET seed 1 is already trained
    todo = [(cfg.variant("inherit"), 0), *cfg.cells()]  # the transfer first: it trains its donor
    assert [f"{v.name}/{s}" for v, s in todo][:4] == ["inherit/0", "base/0", "all/0", "all/1"]
    want = [score + train, score, score, score + train, score + train, score, score, score]
    assert cell_costs(cfg, tmp_path, todo) == pytest.approx(want)
    # on a cluster the first wave trains: a tuned job trains, an adapter-only job only trains
    assert job_cost(cfg, tmp_path, cfg.variant("GET"), 0) == pytest.approx(score + train)
    assert job_cost(cfg, tmp_path, cfg.variant("GET"), 1) == score
    assert job_cost(cfg, tmp_path, cfg.variant("all"), 0, adapter_only=True) == pytest.approx(train)
    assert job_cost(cfg, tmp_path, cfg.variant("inherit"), 0) == score


def test_step_reports_start_with_estimate_and_end_with_elapsed(log):
    clock = FakeClock()
    with log:
        with prog.step("converting the embedded model", estimate_s=63, clock=clock):
            clock.t += 63
        with pytest.raises(KeyError), prog.step("failing", clock=clock):
            raise KeyError("x")
        prog.stage("demo: about 7 min")
    assert log.lines() == ["converting the embedded model (about 63 s) ...",
                           "converting the embedded model: done in 0:01:03",
                           "failing ...",  # no end line: the error says what happened
                           "demo: about 7 min"]
    assert prog.about(7 * 60) == "about 7 min" and prog.about(5400) == "about 1.5 h"


def test_close_before_the_end_says_where_it_stopped(log):
    clock = FakeClock()
    with log:
        bar = prog.Progress(10, "tune all", unit="step", clock=clock)
        bar.set_postfix(loss="2.3000")
        for _ in range(3):
            clock.t += 20
            bar.update()
        bar.close()
    assert log.lines() == ["tune all: 1/10 (10 %) 20.0 s/step, ETA 0:03:00, loss 2.3000",
                           "tune all: 2/10 (20 %) 20.0 s/step, ETA 0:02:40, loss 2.3000",
                           "tune all: 3/10 (30 %) 20.0 s/step, ETA 0:02:20, loss 2.3000",
                           "tune all: 3/10 step stopped after 0:01:00, 20.0 s/step"]


def test_no_progress_env_and_enabled_false_silence_everything(log, monkeypatch):
    clock = FakeClock()
    for env, enabled in (("1", True), (None, False)):
        if env:
            monkeypatch.setenv("AFFECTLENS_NO_PROGRESS", env)
        else:
            monkeypatch.delenv("AFFECTLENS_NO_PROGRESS", raising=False)
        with log:
            bar = prog.Progress(10, "quiet", clock=clock, enabled=enabled)
            assert not bar.active
            for _ in range(10):
                clock.t += 60
                bar.update()
                bar.tick()
            bar.close()
            assert list(prog.progress(range(3), "quiet", enabled=enabled)) == [0, 1, 2]
            with prog.step("quiet step", 5, clock=clock, enabled=enabled):
                clock.t += 60
            prog.stage("quiet stage", enabled=enabled)
    assert log.lines() == []


def test_a_terminal_gets_a_tqdm_bar_not_log_lines(monkeypatch):
    monkeypatch.delenv("AFFECTLENS_NO_PROGRESS", raising=False)
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = prog.Progress(4, "evaluate emotion", unit="ex")
    assert bar.bar is not None and not bar.logging
    for _ in range(4):
        bar.update()
    bar.close()
    out = tty.getvalue()
    assert "\r" in out and "evaluate emotion:" in out and "0/4" in out
    assert "affectlens:" not in out  # no timestamped lines on a terminal

    weighted = Tty()
    wbar = prog.Progress(2, "grid cells", unit="cell", weights=[3, 1], stream=weighted)
    wbar.update()
    wbar.bar.refresh()
    assert "grid cells 1/2 cell:  75%|" in weighted.getvalue()  # the bar runs in cost, the label counts cells
    wbar.close()


def test_runs_keeps_the_old_names_and_progress_is_a_ground_floor_module():
    from affectlens import runs

    assert runs.Progress is prog.Progress and runs.progress is prog.progress
    tree = ast.parse(Path(prog.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.module == "errors", f"affectlens.progress imports .{node.module}"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("tqdm", "__future__"), name
