"""Separating files: windows of bounded size stitched without seams, stems written at the input's rate and channel
count, the ``mixstudio separate`` command and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from studio.cli import main
from studio.separation import separate
from studio.separation.files import separate_file, stem_plan


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few partials plus a little noise, ``(T, C)``."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize(("rate", "channels"), [(16_000, 1), (44_100, 2), (8_000, 6)])
def test_windows_are_stitched_without_seams_at_the_inputs_rate_and_channels(tmp_path, gain_separator, rate, channels):
    """Windows stitched together give what separating the whole file at once gives (a memoryless separator, so
    any seam would show), resampled to the model's rate and back, with the channels fitted."""
    model = gain_separator(gains=(0.25, 0.75)).eval()
    audio = tone(9.3, rate, channels)
    sf.write(tmp_path / "in.wav", audio, rate, subtype="FLOAT")
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    done = separate_file(
        model, tmp_path / "in.wav", out, plan=stem_plan(model.sources, None, None), file_format="wav32",
        window_seconds=2.0, progress=seen.append,
    )  # fmt: skip
    assert done.sample_rate == rate and done.channels == channels and done.stems == {"a": "a.wav", "b": "b.wav"}
    a, a_rate = sf.read(out / "a.wav", dtype="float32", always_2d=True)
    b, _ = sf.read(out / "b.wav", dtype="float32", always_2d=True)
    assert a_rate == rate and a.shape == audio.shape == b.shape
    whole = separate(model, audio.T, rate)  # one pass over the whole signal: the reference
    np.testing.assert_allclose(a, whole["a"].T, atol=1e-5)
    np.testing.assert_allclose(b, whole["b"].T, atol=1e-5)
    if rate == model.sample_rate:  # no resampling: exactly the gains
        np.testing.assert_allclose(a + b, audio, atol=1e-5)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 5  # 9.3 s in 2 s windows


def test_two_stems_write_the_stem_and_the_rest(tmp_path, gain_separator):
    model = gain_separator(sources=("drums", "bass", "lead"), gains=(0.2, 0.3, 0.5)).eval()
    audio = tone(1.0, 16_000)
    sf.write(tmp_path / "in.wav", audio, 16_000, subtype="FLOAT")
    (tmp_path / "out").mkdir()
    plan = stem_plan(model.sources, None, "lead")
    assert plan == {"lead": ["lead"], "no_lead": ["drums", "bass"]}
    separate_file(model, tmp_path / "in.wav", tmp_path / "out", plan=plan, file_format="wav32")
    rest, _ = sf.read(tmp_path / "out" / "no_lead.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(rest, 0.5 * audio, atol=1e-5)
    with pytest.raises(ValueError, match=r"stem 'vocals' is not one this model separates; pick from \['drums'"):
        stem_plan(model.sources, ["vocals"], None)
    with pytest.raises(ValueError, match="give --stems or --two-stems, not both"):
        stem_plan(model.sources, ["drums"], "lead")


def test_mixstudio_separate_writes_a_folder_per_input_and_a_manifest(tmp_path, tiny_bsrnn, capsys):
    tiny_bsrnn.save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "song.wav", tone(2.5, 16_000), 16_000)
    sf.write(tmp_path / "other.flac", tone(1.2, 22_050, channels=2, seed=1), 22_050)
    out = tmp_path / "stems"
    argv = ["--quiet", "separate", str(tmp_path / "song.wav"), str(tmp_path / "other.flac")]
    assert main([*argv, "--model", str(tmp_path / "model"), "--stems", "drums,bass", "--out", str(out)]) == 0
    manifest = json.loads((out / "separation.json").read_text())
    assert [item["stems"] for item in manifest["items"]] == [
        {"drums": "song/drums.wav", "bass": "song/bass.wav"},
        {"drums": "other/drums.wav", "bass": "other/bass.wav"},
    ]
    drums, rate = sf.read(out / "other" / "drums.wav", always_2d=True)
    assert rate == 22_050 and drums.shape == (round(1.2 * 22_050), 2)
    assert not (out / "song" / "lead.wav").exists() and "wrote 2 x 2 stems" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stems", "vocals"], "stem 'vocals' is not one this model separates"),
        (["--two-stems", "lead", "--stems", "bass"], "give --stems or --two-stems, not both"),
        (["--segment", "0"], "--segment must be from 0.1 to 60 seconds"),
        (["--overlap", "0.95"], "--overlap must be a fraction from 0 to 0.9"),
        (["--model", "no-such-separator"], "is neither an embedded separator"),
        (["--format", "mp3"], "argument --format: invalid choice"),
    ],
)
def test_bad_separate_flags_are_refused_before_any_work(tmp_path, tiny_bsrnn, capsys, extra, message):
    tiny_bsrnn.save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "song.wav", tone(0.5, 16_000), 16_000)
    argv = ["--quiet", "separate", str(tmp_path / "song.wav"), "--model", str(tmp_path / "model"), *extra]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_unreadable_empty_and_nan_inputs_are_refused(tmp_path, tiny_bsrnn, capsys):
    tiny_bsrnn.save_pretrained(tmp_path / "model")
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16_000)
    nan = tone(0.5, 16_000)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    for name, message in [
        ("missing.wav", "does not exist"),
        ("text.wav", "is not a readable audio file"),
        ("empty.wav", "holds no samples"),
        ("nan.wav", "holds NaN or inf samples"),
    ]:
        argv = ["--quiet", "separate", str(tmp_path / name), "--model", str(tmp_path / "model")]
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2, name
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_eval_separation_scores_separated_world_clips_against_their_stems(
    tmp_path, gain_separator, capsys, monkeypatch
):
    """A separator that returns a third of the mix per stem scores the SDR of mix/3 against each true stem."""
    thirds = gain_separator(sources=("drums", "bass", "lead"), gains=(1 / 3,) * 3).eval()
    monkeypatch.setattr("studio.cli.separate.load_model", lambda name: thirds)
    world = tmp_path / "world"
    assert main(["--quiet", "world", "synth", "--n", "3", "--seed", "4", "--out", str(world)]) == 0
    est = tmp_path / "est"
    clips = [str(world / f"000{i}.wav") for i in range(3)]
    assert main(["--quiet", "separate", *clips, "--model", str(tmp_path / "thirds"), "--out", str(est)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "eval", "--separation", str(est), "--reference", str(world)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((est / "eval-separation.json").read_text())
    assert report["inputs"] == 3 and report["stems"] == ["drums", "bass", "lead"] and "mean" in printed
    import torch

    from studio.evaluation.separation import separation_scores

    mixes = torch.stack([torch.from_numpy(sf.read(c, dtype="float32", always_2d=True)[0].T) for c in clips])
    refs = torch.stack(
        [torch.stack([torch.from_numpy(sf.read(world / "stems" / f"000{i}_{s}.wav", dtype="float32",
                                               always_2d=True)[0].T) for s in ("drums", "bass", "lead")])
         for i in range(3)]
    )  # fmt: skip
    direct = separation_scores(
        mixes[:, None].expand(-1, 3, -1, -1) / 3, refs, mixes, 16_000, ["drums", "bass", "lead"]
    )
    assert report["scores"]["si_sdr"] == pytest.approx(direct["si_sdr"], abs=0.05)  # 16-bit stems, one rounding
    assert report["scores"]["si_sdri"] == pytest.approx(0.0, abs=0.05)  # a scaled mixture improves nothing
    assert main(["--quiet", "eval", "--separation", str(est)]) == 2
    assert "needs --reference REF" in capsys.readouterr().err
