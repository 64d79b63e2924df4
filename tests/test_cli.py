"""The CLI end to end: world → eval, and one-line errors with a non-zero exit for bad input."""

import json

import numpy as np
import pytest

from studio.cli import main
from studio.io import write_png


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("world", "n", "per_prompt", "ext"), [("shapes", 16, 4, "png"), ("synth", 8, 2, "wav")])
def test_world_then_eval_scores_world_samples_as_adherent(tmp_path, capsys, world, n, per_prompt, ext):
    out = tmp_path / world
    code, stdout, _ = run(capsys, "world", world, "--n", str(n), "--per-prompt", str(per_prompt), "--out", str(out))
    assert code == 0, stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["items"]) == n and (out / "grid.png").is_file()
    assert all((out / item["file"]).suffix == f".{ext}" for item in manifest["items"])
    if world == "synth":
        assert len(list((out / "stems").glob("*.wav"))) == 3 * n

    code, stdout, _ = run(capsys, "eval", str(out), "--reference", "32")
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["samples"] == n and report["prompts"] == n // per_prompt
    assert report["adherence"] >= 0.85  # world samples are what their prompts say
    assert min(report["label_accuracy"].values()) >= 0.85
    assert 0.0 < report["diversity"] < 2.0
    assert "adherence" in stdout


def test_world_is_deterministic_by_seed(tmp_path, capsys):
    for name in ("a", "b"):
        assert run(capsys, "world", "shapes", "--n", "3", "--seed", "7", "--out", str(tmp_path / name))[0] == 0
    assert (tmp_path / "a" / "0002.png").read_bytes() == (tmp_path / "b" / "0002.png").read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()


def one_line_error(capsys, *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_world_arguments(tmp_path, capsys):
    assert "use one of ['shapes', 'synth']" in one_line_error(capsys, "world", "mars", "--out", str(tmp_path / "o"))
    assert "--n must be between" in one_line_error(capsys, "world", "shapes", "--n", "0", "--out", str(tmp_path / "o"))
    assert "--per-prompt" in one_line_error(
        capsys, "world", "shapes", "--n", "5", "--per-prompt", "2", "--out", str(tmp_path / "o")
    )
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    assert "is a file" in one_line_error(capsys, "world", "shapes", "--out", str(file))
    assert file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing half-written


def write_folder(folder, items, world="shapes"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"world": world, "items": items}))


def test_bad_eval_inputs(tmp_path, capsys):
    assert "has no manifest.json" in one_line_error(capsys, "eval", str(tmp_path))
    assert "is not a folder" in one_line_error(capsys, "eval", str(tmp_path / "missing"))

    folder = tmp_path / "wrong_size"
    write_png_at = folder / "0.png"
    write_folder(folder, [{"file": "0.png", "prompt": "a red circle"}])
    write_png(write_png_at, np.zeros((40, 40, 3), np.uint8))
    assert "expects 32x32" in one_line_error(capsys, "eval", str(folder))

    folder = tmp_path / "not_png"
    write_folder(folder, [{"file": "0.png", "prompt": "a red circle"}])
    (folder / "0.png").write_bytes(b"garbage")
    assert "not a readable image" in one_line_error(capsys, "eval", str(folder))

    folder = tmp_path / "bad_labels"
    write_folder(folder, [{"file": "0.png", "prompt": "a red circle", "labels": {"flavour": "sweet"}}])
    write_png(folder / "0.png", np.zeros((32, 32, 3), np.uint8))
    assert "unknown shapes attribute 'flavour'" in one_line_error(capsys, "eval", str(folder))
    assert not (folder / "eval.json").exists()


def test_bad_train_arguments(capsys):
    assert "unknown recipe" in one_line_error(capsys, "train", "judge-mars-eval")
    assert "unknown config key" in one_line_error(capsys, "train", "judge-shapes-eval", "--set", "nope=1")
    assert "epochs must be positive" in one_line_error(capsys, "train", "judge-shapes-eval", "--set", "epochs=0")
