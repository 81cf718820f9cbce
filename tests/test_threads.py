"""The thread policy: the idle share of the usable cores, the user's choice first."""

from __future__ import annotations

import os

import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.threads import apply_thread_policy, choose_threads


@pytest.mark.parametrize("cores,load,expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 3.7, 1), (16, 4.0, 12), (8, 0.6, 7), (1, 0.0, 1),
])
def test_idle_share_of_the_cores(cores, load, expected):
    assert choose_threads(cores, load) == expected


def test_explicit_choice_wins_and_is_checked():
    assert choose_threads(2, 5.0, "3") == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(AffectlensError, match="AFFECTLENS_THREADS"):
            choose_threads(2, 0.0, bad)


def test_policy_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setenv("AFFECTLENS_THREADS", "1")
        assert apply_thread_policy() == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"  # for a torch imported later
        monkeypatch.delenv("AFFECTLENS_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert apply_thread_policy() is None  # the user's OMP setting is left alone
    finally:
        torch.set_num_threads(before)


def test_bad_thread_setting_is_one_line(monkeypatch, capfd, tmp_path):
    from conftest import TINYSTORIES
    from faults import assert_refused, run_cli

    monkeypatch.setenv("AFFECTLENS_THREADS", "lots")
    assert_refused(run_cli(capfd, "params", TINYSTORIES, "--modules", "all"), contains="AFFECTLENS_THREADS")
