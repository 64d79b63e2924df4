"""Threads: one helper sets the count and the OpenMP wait policy; the CLI applies ``--threads`` and gives it back."""

import os
import subprocess
import sys

import pytest
import torch

from studio.cli import COMMANDS, main
from studio.threads import MAX_THREADS, available_cores, set_threads


def test_set_threads_checks_the_count_and_sets_torch_and_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert set_threads() == available_cores() >= 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, MAX_THREADS + 1, 1.5, True):
        with pytest.raises(ValueError, match="--threads must be a whole number"):
            set_threads(bad)


def test_passive_waits_are_set_before_torch_starts_and_a_users_policy_is_kept():
    code = (
        "import os, sys; from studio.threads import prefer_passive_waits as p; first = p(); "
        "print(first, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "PASSIVE", "False"]
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True
    ).stdout
    assert out.split() == ["False", "ACTIVE", "False"]


def test_the_cli_runs_with_threads_and_gives_the_setting_back(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(COMMANDS["world"], "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    assert main(["--threads", "1", "world", "shapes", "--out", str(tmp_path / "w")]) == 0
    assert seen == [1] and torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
    assert main(["--threads", "0", "world", "shapes", "--out", str(tmp_path / "w")]) == 2
    assert "--threads must be a whole number from 1 to 256, got 0" in capsys.readouterr().err
