"""``mixstudio sweep``: one scored folder per guidance scale, a table, a plot; bad input leaves nothing behind."""

import json

import numpy as np
import pytest

from studio.cli import main
from studio.evaluation import evaluate_folder
from studio.io import read_image


def test_sweep_scores_each_guidance_scale_like_mixstudio_eval(tmp_path, capsys, tiny_shapes_folder):
    out = tmp_path / "sweep"
    args = ["--quiet", "sweep", "image", "--model", str(tiny_shapes_folder), "--world", "shapes"]
    args += ["--guidance", "1", "3", "-n", "2", "--steps", "1", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "| 3 |" in printed

    report = json.loads((out / "sweep.json").read_text())
    assert [p["guidance"] for p in report["points"]] == [1.0, 3.0]
    assert report["prompts"] == 48 and report["per_prompt"] == 2
    for point in report["points"]:
        folder = out / point["folder"]
        assert len(list(folder.glob("0*.png"))) == 96
        direct = evaluate_folder(folder)  # the sweep's numbers are exactly what `mixstudio eval` reports
        assert point["adherence"] == pytest.approx(direct.adherence)
        assert point["diversity"] == pytest.approx(direct.diversity)
        assert json.loads((folder / "eval.json").read_text())["adherence"] == pytest.approx(direct.adherence)
    unguided = read_image(out / "guidance-1" / "0000.png").astype(int)
    guided = read_image(out / "guidance-3" / "0000.png").astype(int)
    assert np.abs(unguided - guided).max() > 0  # same seed, different guidance: a different image
    plot = read_image(out / "sweep.png")
    assert plot.shape[0] > 200 and plot.std() > 0
    assert (out / "sweep.md").read_text().count("\n| ") == 3  # header + two rows


def test_sweep_applies_guidance_rescale_and_interval_at_every_scale(tmp_path, capsys, tiny_shapes_folder):
    out = tmp_path / "refined"
    args = ["--quiet", "sweep", "image", "--model", str(tiny_shapes_folder), "--guidance", "3", "-n", "2"]
    args += ["--steps", "2", "--guidance-rescale", "0.7", "--guidance-interval", "0", "0.5", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert "rescale φ=0.7 · guided at t/T in [0, 0.5] only" in capsys.readouterr().out
    report = json.loads((out / "sweep.json").read_text())
    assert report["guidance_rescale"] == 0.7 and report["guidance_interval"] == [0.0, 0.5]
    meta = json.loads((out / "guidance-3" / "manifest.json").read_text())["meta"]
    assert meta["guidance_rescale"] == 0.7 and meta["guidance_interval"] == [0.0, 0.5]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance", "2", "2"], "distinct"),
        (["-n", "1"], "at least 2"),
        (["--guidance", "nan"], "--guidance"),
        (["--guidance-interval", "0.5", "0.5"], "--guidance-interval must satisfy"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_sweep_rejects_bad_settings_before_sampling(tmp_path, capsys, tiny_shapes_folder, extra, message):
    out = tmp_path / "sweep"
    args = ["--quiet", "sweep", "image", "--model", str(tiny_shapes_folder), "--world", "shapes", "--out", str(out)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_sweep_compiles_the_unet_once_when_asked(tmp_path, capsys, tiny_shapes_folder, monkeypatch):
    compiled = []
    monkeypatch.setattr("studio.pipelines.compile_pipeline", lambda pipe: compiled.append(pipe) or pipe)
    args = ["--quiet", "sweep", "image", "--model", str(tiny_shapes_folder), "--guidance", "1", "2", "-n", "2"]
    assert main([*args, "--steps", "1", "--compile", "--out", str(tmp_path / "s")]) == 0, capsys.readouterr().err
    assert len(compiled) == 1  # one model, two scales: compiled once
