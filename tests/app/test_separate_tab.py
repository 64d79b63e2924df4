"""The app's Separate tab service: separators listed by name, uploads, Music-tab clips and world clips with scores."""

import numpy as np
import pytest
import soundfile as sf
import torch

from studio.app.handlers import Handlers
from studio.app.service import Studio
from studio.separation import BandSplitRNN


def tiny_separator(folder):
    torch.manual_seed(0)
    model = BandSplitRNN(
        segment_samples=8000, bands=((1000.0, 250.0), (8000.0, 1000.0)), features=16, hidden=16, layers=1,
        mask_hidden=16,
    )  # fmt: skip
    model.save_pretrained(folder)


@pytest.fixture
def studio(workdir, no_embedded):
    tiny_separator(workdir / "runs" / "sep" / "model")
    service = Studio(workdir)
    yield service
    service.close()


def files_under(folder):
    return (
        sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    )


def test_separators_are_listed_by_name(studio):
    assert studio.list_separators() == ["runs/sep/model"]  # the run's config.json is not a separator


def test_a_world_clip_is_separated_and_scored_against_its_true_stems(studio):
    result = studio.separate("runs/sep/model", "world", world_seed=3)
    assert list(result.stems) == ["drums", "bass", "lead"] and result.sample_rate == 16_000
    audio, rate = sf.read(result.stems["bass"])
    assert rate == 16_000 and audio.shape == (32_768,)
    assert all(p.shape[2] == 3 and p.dtype == np.uint8 for p in result.spectrograms.values())
    assert {"sdr", "si_sdr", "si_sdri", "sdr_drums", "new_sdr_lead"} <= set(result.scores)
    assert np.isfinite(result.scores["si_sdr"]) and result.source == "synth world clip, seed 3"
    table = Handlers(studio).separate("runs/sep/model", "a synth world clip (true stems known)", None, None, 3)
    players, status = table[:4], table[-1]
    assert [p.visible for p in players] == [True, True, True, False] and "3 stems" in status


def test_an_upload_and_a_music_clip_are_separated_at_their_own_rate(studio, tmp_path):
    stereo = np.random.default_rng(0).standard_normal((22_050, 2)).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", stereo, 44_100)
    result = studio.separate("runs/sep/model", "upload", upload=str(tmp_path / "song.wav"))
    audio, rate = sf.read(result.stems["lead"], always_2d=True)
    assert rate == 44_100 and audio.shape == (22_050, 2) and result.scores is None
    made = studio.generate_music("runs/music", "a tune", steps=1, count=1)
    clip = made.files[0].relative_to(studio.workdir).as_posix()
    assert studio.music_clips() == [clip]
    assert studio.separate("runs/sep/model", "clip", clip=clip).source == f"clip {clip}"


@pytest.mark.parametrize(
    ("model", "source", "kwargs", "message"),
    [
        ("nope", "world", {"world_seed": 1}, "unknown separator 'nope'"),
        ("runs/sep/model", "radio", {}, "source must be one of"),
        ("runs/sep/model", "upload", {}, "no file uploaded"),
        ("runs/sep/model", "upload", {"upload": "/etc/passwd"}, "is not a readable audio file"),
        ("runs/sep/model", "clip", {"clip": "../../etc/passwd"}, "unknown clip"),
        ("runs/sep/model", "world", {"world_seed": -1}, "world clip seed must be a whole number"),
    ],
)
def test_bad_separation_requests_are_refused_and_write_nothing(studio, model, source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        studio.separate(model, source, **kwargs)
    assert files_under(studio.workdir / "separations") == []
