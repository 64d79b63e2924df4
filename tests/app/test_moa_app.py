"""Mixture-of-attention personalisation in the app: listing runs by base model, the subject upload, router maps,
and the errors a user can cause (with nothing written)."""

import json

import numpy as np
import pytest

from studio.app.handlers import Handlers
from studio.app.inputs import fit_subject
from studio.app.service import Studio
from studio.attention.moa import MoA, MoASettings
from studio.io import read_image
from studio.pipelines import load_pipeline
from tests.attention.test_moa import perturbed

PROMPT = "a sks shape on a navy background"


def make_moa(workdir, model: str, name: str, mode: str = "encoder", seed: int = 1):
    """A perturbed (so it changes samples) MoA of ``runs/<model>`` saved as ``runs/<name>/moa.safetensors``."""
    base = workdir / "runs" / model
    moa = perturbed(MoA.create(load_pipeline(base, "image").unet, MoASettings(mode=mode, base=str(base))), seed)
    (workdir / "runs" / name).mkdir(parents=True)
    return moa.save(workdir / "runs" / name)


@pytest.fixture
def studio(workdir, no_embedded):
    make_moa(workdir, "a", "moa-a")
    make_moa(workdir, "a", "moa-a-one", mode="subject", seed=2)
    make_moa(workdir, "wide", "moa-wide", seed=3)
    service = Studio(workdir)
    yield service
    service.close()


def subject_picture(height=40, width=56) -> np.ndarray:
    """An RGBA upload, wider than tall, with a red disc at its centre and transparent corners."""
    y, x = np.mgrid[:height, :width]
    disc = (y - height / 2) ** 2 + (x - width / 2) ** 2 < (height / 3) ** 2
    picture = np.zeros((height, width, 4), np.uint8)
    picture[disc] = (230, 30, 30, 255)
    return picture


def test_moa_runs_are_listed_with_their_base_model_only(studio):
    assert [(m.name, m.mode, m.base) for m in studio.list_moa("runs/a")] == [
        ("runs/moa-a", "encoder", "runs/a"),
        ("runs/moa-a-one", "subject", "runs/a"),
    ]
    assert [m.name for m in studio.list_moa("runs/wide")] == ["runs/moa-wide"]
    assert studio.list_moa("runs/b") == []
    choices = Handlers(studio).moa_choices("runs/a")
    assert choices[0] == ("none", "") and [v for _, v in choices[1:]] == ["runs/moa-a", "runs/moa-a-one"]
    with pytest.raises(ValueError, match="trained on 'runs/wide', not 'runs/a'; pick that model"):
        studio.generate_image("runs/a", PROMPT, steps=2, moa="runs/moa-wide", subject=subject_picture())
    with pytest.raises(ValueError, match="unknown MoA run '/etc/passwd'"):
        studio.generate_image("runs/a", PROMPT, steps=2, moa="/etc/passwd", subject=subject_picture())


def test_generate_with_an_uploaded_subject_writes_images_and_router_maps(studio):
    kwargs = {"steps": 2, "guidance": 2.0, "seed": 3, "count": 2}
    base = studio.generate_image("runs/a", "a shape on a navy background", **kwargs)
    off = studio.generate_image(
        "runs/a", PROMPT, moa="runs/moa-a", subject=subject_picture(), moa_strength=0, **kwargs
    )
    on = studio.generate_image("runs/a", PROMPT, moa="runs/moa-a", subject=subject_picture(), **kwargs)
    for a, b in zip(base.samples, off.samples, strict=True):
        np.testing.assert_array_equal(a, b)  # strength 0 is exactly the base model
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(base.samples, on.samples)) > 0
    assert base.router_files == [] and [p.name for p in on.router_files] == ["0000.png", "0001.png"]
    size = on.samples[0].shape[0]
    for path, sample in zip(on.router_files, on.samples, strict=True):
        overlay = read_image(path, size)
        assert overlay.shape == sample.shape and not np.array_equal(overlay, sample)  # tinted where it drew
    meta = json.loads(on.manifest.read_text())["meta"]
    assert meta["moa_strength"] == 1.0 and meta["moa"].endswith("moa.safetensors")

    gallery, _, status = Handlers(studio).generate_image(
        "runs/a", PROMPT, "", 2, 2.0, 3, 2, "saved", moa="runs/moa-a", subject=subject_picture(), moa_strength=1.0
    )
    assert [caption for _, caption in gallery] == [
        "seed 3", "seed 3 · router (magenta: subject branch)", "seed 4", "seed 4 · router (magenta: subject branch)"
    ]  # fmt: skip
    assert "router maps in `router/`" in status
    hidden, _, _ = Handlers(studio).generate_image(
        "runs/a", PROMPT, "", 2, 2.0, 3, 1, "saved", moa="runs/moa-a", subject=subject_picture(), show_router=False
    )
    assert [caption for _, caption in hidden] == ["seed 3"]


def test_a_subject_mode_run_needs_no_picture_and_refuses_one(studio):
    result = studio.generate_image("runs/a", PROMPT, steps=2, moa="runs/moa-a-one")
    assert len(result.router_files) == 1
    with pytest.raises(ValueError, match="trained on one subject of its own; clear the subject picture"):
        studio.generate_image("runs/a", PROMPT, steps=2, moa="runs/moa-a-one", subject=subject_picture())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": "a shape on a navy background"}, "does not name the subject: put 'sks' before its class word"),
        ({"prompt": "a shape sks"}, "'sks' must come before the class word"),
        ({"subject": None}, "reads the subject from a picture: upload one, or pick MoA none"),
        ({"subject": np.zeros((4, 4, 2), np.uint8)}, "is not a picture; upload a PNG or JPEG"),
        ({"subject": np.full((8, 8, 3), np.nan)}, "not finite numbers"),
        ({"subject": np.zeros((3, 90, 3), np.uint8)}, "at least 8 pixels on each side"),
        ({"moa_strength": -0.5}, "strength must be a number in 0..10"),
    ],
)
def test_bad_personalisation_input_is_refused_before_anything_is_written(studio, change, message):
    args = {"prompt": PROMPT, "subject": subject_picture(), "moa_strength": 1.0} | change
    prompt = args.pop("prompt")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        studio.generate_image("runs/a", prompt, steps=2, moa="runs/moa-a", **args)
    assert not (studio.workdir / "outputs").exists()


def test_fit_subject_crops_the_centre_square_and_fills_transparency_with_grey():
    fitted = fit_subject(subject_picture(40, 56), 20)
    assert fitted.shape == (20, 20, 3) and fitted.dtype == np.uint8
    np.testing.assert_array_equal(fitted[10, 10], [230, 30, 30])  # the disc at the centre survives the crop
    np.testing.assert_array_equal(fitted[0, 0], [128, 128, 128])  # transparent corners are the references' grey
    stripes = np.zeros((10, 30), np.uint8)
    stripes[:, 10:20] = 255  # only the middle third is white: the centre crop is all white
    np.testing.assert_array_equal(fit_subject(stripes, 10), np.full((10, 10, 3), 255, np.uint8))
    np.testing.assert_array_equal(fit_subject(np.full((12, 12, 3), 0.5), 6), np.full((6, 6, 3), 128, np.uint8))
