import json

import numpy as np
import pytest
import torch
from torchaudio.models import HDemucs

from studio.separation import (
    HDemucsSeparator,
    load_hdemucs_checkpoint,
    load_separator,
    save_hdemucs_checkpoint,
    separate,
)
from studio.separation.hdemucs import min_depth

MUSDB_SOURCES = ["drums", "bass", "other", "vocals"]


def test_wrapper_shapes_short_inputs_and_round_trip(tiny_hdemucs, tmp_path):
    mix = torch.randn(2, 1, 5000)
    with torch.no_grad():
        out = tiny_hdemucs(mix)
        assert out.shape == (2, 3, 1, 5000) and torch.isfinite(out).all()
        assert tiny_hdemucs(torch.randn(1, 1, 37)).shape == (1, 3, 1, 37)  # below HDemucs's own minimum
        assert torch.equal(tiny_hdemucs(torch.zeros(1, 1, 3000)), torch.zeros(1, 3, 1, 3000))
    tiny_hdemucs.save_pretrained(tmp_path)
    loaded = load_separator(tmp_path)
    assert isinstance(loaded, HDemucsSeparator)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix), out, atol=0, rtol=0)


def test_default_size_is_comparable_to_the_bsrnn():
    params = sum(p.numel() for p in HDemucsSeparator().parameters())
    assert 1_500_000 < params < 3_000_000  # measured 2,243,385 (9.0 MB in float32)


def test_depth_must_merge_the_two_branches():
    assert min_depth(1024) == 4 and min_depth(4096) == 5
    with pytest.raises(ValueError, match="depth >= 4"):
        HDemucsSeparator(depth=3)
    with pytest.raises(ValueError, match="not settable"):
        HDemucsSeparator(options={"nfft": 512})


def _random_torchaudio_model(sources, audio_channels, **arch) -> HDemucs:
    torch.manual_seed(0)
    model = HDemucs(sources=sources, audio_channels=audio_channels, **arch)
    with torch.no_grad():  # move every weight off its initial value, so a skipped tensor would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_checkpoint_loader_separates_44k_stereo_into_four_stems(tmp_path):
    # the architecture of torchaudio's hdemucs_high (nfft 4096, depth 6), narrowed to 4 channels for the test
    arch = {"nfft": 4096, "depth": 6, "channels": 4}
    model = _random_torchaudio_model(MUSDB_SOURCES, 2, **arch)
    folder = save_hdemucs_checkpoint(model, tmp_path / "ckpt", sample_rate=44_100, architecture=arch)
    assert sorted(p.name for p in folder.iterdir()) == [".mixstudio", "config.json", "model.safetensors"]
    separator = load_separator(folder)  # no _class_name: read as a checkpoint
    assert isinstance(separator, HDemucsSeparator)
    assert (separator.sources, separator.sample_rate, separator.audio_channels) == (MUSDB_SOURCES, 44_100, 2)
    assert separator.segment_samples == 441_000  # the 10 s default
    mix = torch.randn(1, 2, 44_100)
    with torch.no_grad():
        torch.testing.assert_close(separator(mix), model(mix), atol=0, rtol=0)
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 50_000)).astype(np.float32)
    stems = separate(separator, stereo, 44_100, segment=0.5)
    assert list(stems) == MUSDB_SOURCES
    assert all(s.shape == (2, 50_000) and np.isfinite(s).all() for s in stems.values())


def test_checkpoint_loader_reads_mono_16k_with_segment_and_options(tmp_path):
    arch = {"nfft": 1024, "depth": 5, "channels": 4, "growth": 2, "dconv_lstm": 3}
    model = _random_torchaudio_model(["drums", "bass", "lead"], 1, **arch)
    save_hdemucs_checkpoint(model, tmp_path, sample_rate=16_000, architecture=arch, segment_seconds=1.5)
    separator = load_hdemucs_checkpoint(tmp_path)
    assert separator.segment_samples == 24_000 and separator.config.options == {"dconv_lstm": 3}
    mix = torch.randn(1, 1, 9000)
    with torch.no_grad():
        torch.testing.assert_close(separator(mix), model(mix), atol=0, rtol=0)


def test_checkpoint_loader_names_what_is_wrong(tmp_path):
    arch = {"nfft": 1024, "depth": 5, "channels": 4}
    model = _random_torchaudio_model(["drums", "bass", "lead"], 1, **arch)
    save_hdemucs_checkpoint(model, tmp_path, sample_rate=16_000, architecture=arch)
    config = json.loads((tmp_path / "config.json").read_text())

    (tmp_path / "config.json").write_text(json.dumps(config | {"channels": 8}))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_hdemucs_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"sources": ["a", "b"]}))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_hdemucs_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"nfft_size": 1024}))
    with pytest.raises(ValueError, match=r"unknown \['nfft_size'\]"):
        load_hdemucs_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "sample_rate"}))
    with pytest.raises(ValueError, match=r"missing \['sample_rate'\]"):
        load_hdemucs_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"exactly one \.safetensors"):
        load_hdemucs_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_hdemucs_checkpoint(tmp_path / "missing")
