import json

import pytest
import torch

from studio.separation import SEPARATORS, BandSplitRNN, check_contract, load_separator, separator_class


def test_every_registered_family_speaks_the_contract():
    assert set(SEPARATORS) == {"bsrnn", "hdemucs", "blend", "msdm"}
    torch.manual_seed(0)
    tiny_msdm = {"segment_samples": 4096, "n_fft": 64, "patch": 2, "channels": (8, 16), "attention_levels": (1,),
                 "heads": 2, "text_encoder_package": None}  # fmt: skip
    for name, fields in [("bsrnn", {"segment_samples": 4000}), ("hdemucs", {"segment_samples": 4000}),
                         ("msdm", tiny_msdm)]:  # fmt: skip
        model = SEPARATORS[name](**fields).eval()
        assert (model.sources, model.sample_rate, model.audio_channels, model.segment_samples) == (
            ["drums", "bass", "lead"], 16_000, 1, fields["segment_samples"],
        )  # fmt: skip
        if name == "msdm":
            model.configure_separation(steps=2)
        with torch.no_grad():
            assert model(torch.randn(2, 1, 3001)).shape == (2, 3, 1, 3001)
        with pytest.raises(ValueError, match="separate"):
            model(torch.randn(1, 3001))  # no channel axis
        with pytest.raises(ValueError, match="float"):
            model(torch.zeros(1, 1, 100, dtype=torch.int16))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((["a", "a"], 16_000, 1, 10), "distinct"),
        (([], 16_000, 1, 10), "distinct"),
        ((["a"], 100, 1, 10), "sample_rate"),
        ((["a"], 16_000, 0, 10), "audio_channels"),
        ((["a"], 16_000, 1, 0), "segment_samples"),
    ],
)
def test_contract_fields_are_validated(fields, match):
    with pytest.raises(ValueError, match=match):
        check_contract(*fields)


def test_load_separator_names_what_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_separator(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="not a separator class"):
        load_separator(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_separator(tmp_path)
    assert separator_class("BandSplitRNN") is BandSplitRNN
