"""``mixstudio separate`` with a multi-source diffusion model, ``mixstudio generate stems``, and their refusals."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from studio.cli import main
from studio.io import as_written
from studio.separation import MultiSourceDiffusion


@pytest.fixture
def msdm_folder(tmp_path):
    torch.manual_seed(0)
    model = MultiSourceDiffusion(segment_samples=4096, n_fft=64, patch=2, channels=(8, 16), attention_levels=(1,),
                                 heads=2, text_encoder_package=None)  # fmt: skip
    # a zero output layer makes D(x; σ) = c_skip x, the exact denoiser of N(0, σ_d²): samples stay in [-1, 1]
    torch.nn.init.zeros_(model.unet.conv_out.weight)
    torch.nn.init.zeros_(model.unet.conv_out.bias)
    model.save_pretrained(tmp_path / "msdm")
    return tmp_path / "msdm"


@pytest.fixture
def song(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, 5000).astype(np.float32)
    sf.write(tmp_path / "song.wav", audio, 16_000)
    return tmp_path / "song.wav"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_separate_with_diffusion_flags_records_them(tmp_path, msdm_folder, song):
    argv = ["--quiet", "separate", str(song), "--model", str(msdm_folder), "--steps", "2", "--likelihood", "dirac"]
    assert main([*argv, "--churn", "0", "--resamples", "2", "--out", str(tmp_path / "out")]) == 0
    settings = json.loads((tmp_path / "out" / "separation.json").read_text())["settings"]
    assert settings["likelihood"] == "dirac" and settings["steps"] == 2 and settings["resamples"] == 2
    stems = [sf.read(tmp_path / "out" / "song" / f"{name}.wav")[0] for name in ("drums", "bass", "lead")]
    assert all(s.shape == (5000,) for s in stems)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be a whole number from 1 to 1000"),
        (["--churn", "-1"], "--churn must be a finite number from 0 to 1000"),
        (["--resamples", "0"], "--resamples must be a whole number from 1 to 10"),
        (["--likelihood", "laplace"], "argument --likelihood: invalid choice"),
    ],
)
def test_bad_diffusion_flags_are_refused(tmp_path, msdm_folder, song, capsys, extra, message):
    argv = ["separate", str(song), "--model", str(msdm_folder), *extra, "--out", str(tmp_path / "out")]
    assert message in one_line_error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_diffusion_flags_are_refused_for_other_separators(tmp_path, tiny_bsrnn, song, capsys):
    tiny_bsrnn.save_pretrained(tmp_path / "bsrnn")
    argv = ["separate", str(song), "--model", str(tmp_path / "bsrnn"), "--likelihood", "gaussian", "--steps", "3"]
    error = one_line_error(capsys, [*argv, "--out", str(tmp_path / "out")])
    assert "--likelihood, --steps apply to multi-source diffusion models" in error and "BandSplitRNN" in error
    assert not (tmp_path / "out").exists()


def test_generate_stems_writes_mixes_stems_and_a_manifest(tmp_path, msdm_folder, capsys):
    out = tmp_path / "gen"
    argv = ["--quiet", "generate", "stems", "-n", "2", "--model", str(msdm_folder), "--steps", "8", "--seed", "3"]
    assert main([*argv, "--length", "0.25", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [item["seed"] for item in manifest["items"]] == [3, 4] and manifest["meta"]["source"] == "generate stems"
    mix, rate = sf.read(out / "0001.wav")
    parts = [sf.read(out / "stems" / f"0001_{name}.wav")[0] for name in ("drums", "bass", "lead")]
    assert rate == 16_000 and mix.shape == (4000,) and (out / "grid.png").is_file()
    np.testing.assert_allclose(sum(parts), mix, atol=3 / 32768)  # the mix is the stems' sum (16-bit rounding)
    # accompaniment: the given stem comes back as given
    drums = np.random.default_rng(1).uniform(-0.2, 0.2, 3000).astype(np.float32)
    sf.write(tmp_path / "beat.wav", drums, 16_000)
    given = ["--given", f"drums={tmp_path / 'beat.wav'}", "--out", str(tmp_path / "acc")]
    assert main(["--quiet", "generate", "stems", "--model", str(msdm_folder), "--steps", "8", *given]) == 0
    kept, _ = sf.read(tmp_path / "acc" / "stems" / "0000_drums.wav", dtype="float32")
    np.testing.assert_array_equal(kept, as_written(as_written(drums)))
    assert "drums" in json.loads((tmp_path / "acc" / "manifest.json").read_text())["meta"]["given"]


def test_generate_stems_refusals(tmp_path, msdm_folder, tiny_bsrnn, capsys):
    tiny_bsrnn.save_pretrained(tmp_path / "bsrnn")
    beat = tmp_path / "beat.wav"
    sf.write(beat, np.zeros(100, np.float32), 16_000)
    out = ["--out", str(tmp_path / "o")]
    model = ["--model", str(msdm_folder)]
    for argv, message in [
        (["generate", "music", "a tune", "--given", "drums=x.wav", *out], "--given apply to `generate stems` only"),
        (["generate", "stems", *model, "--scheduler", "ddim", *out], "--scheduler does not apply"),
        (["generate", "stems", *out], "--model is required for stems"),
        (["generate", "stems", "--model", str(tmp_path / "bsrnn"), *out], "not a multi-source diffusion model"),
        (["generate", "stems", *model, "--given", "drums", *out], "must be STEM=FILE"),
        (["generate", "stems", *model, "--given", f"vocals={beat}", *out], "--given stem 'vocals' is not one"),
        (["generate", "stems", *model, *(f"--given={s}={beat}" for s in ("drums", "bass", "lead")), *out], "every"),
        (["generate", "stems", "a fast tune", *model, *out], "no text encoder"),
        (["generate", "stems", *model, "--churn", "nan", *out], "--churn must be a finite number"),
    ]:
        assert message in one_line_error(capsys, argv), argv
        assert not (tmp_path / "o").exists()
