"""The personalisation concept: a crescent the shapes world never draws, rendered exactly and reproducibly."""

import math

import numpy as np
import pytest

from studio.cli import main
from studio.io import read_image
from studio.worlds.concept import crescent_coverage, render_concept
from studio.worlds.shapes import OBJECT_RGB


def lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs with radii r1, r2 whose centres are d apart (d < r1 + r2)."""
    a = r1 * r1 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    b = r2 * r2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    return a + b - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))


@pytest.mark.parametrize(("radius", "angle"), [(8.0, 0.0), (10.0, 0.7)])
def test_crescent_area_is_the_disc_minus_the_bite(radius, angle):
    area = float(crescent_coverage(16.0, 16.0, radius, angle).sum())
    expected = math.pi * radius**2 - lens_area(radius, 0.8 * radius, 0.55 * radius)
    assert area == pytest.approx(expected, rel=0.01)
    cover = crescent_coverage(16.0, 16.0, radius, 0.0)
    assert cover[16, 16 + int(0.55 * radius)] == 0 and cover[16, 16 - int(0.9 * radius)] == 1  # bite on the right


def test_concept_images_are_orange_crescents_reproducible_by_seed(tmp_path, capsys):
    images = render_concept(8, seed=0)
    assert len(images) == 8 and all(i.shape == (32, 32, 3) and i.dtype == np.uint8 for i in images)
    assert all(np.array_equal(a, b) for a, b in zip(images, render_concept(8, seed=0), strict=True))
    assert not np.array_equal(images[0], render_concept(1, seed=1)[0])
    bright = images[0][images[0].sum(-1) > 300].astype(float).mean(0)
    assert np.abs(bright - OBJECT_RGB["orange"]).max() < 30
    with pytest.raises(ValueError, match="between 1 and 100 concept images, got 0"):
        render_concept(0)

    assert main(["--quiet", "world", "shapes", "--concept", "--n", "3", "--out", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".mixstudio"] + [
        f"concept-0{i}.png" for i in range(3)
    ]
    assert np.array_equal(read_image(tmp_path / "c" / "concept-02.png"), images[2])
    assert "finetune --set data.dir=" in capsys.readouterr().out
    assert main(["--quiet", "world", "synth", "--concept", "--out", str(tmp_path / "d")]) == 2
    assert "--concept renders a shapes concept" in capsys.readouterr().err and not (tmp_path / "d").exists()


# ---- the subject family (mixture-of-attention) -------------------------------------------------------------------
from studio.worlds.concept import (  # noqa: E402
    PATTERNS,
    SILHOUETTES,
    Subject,
    all_subjects,
    reference_image,
    render_subject,
    subject_by_name,
    subject_caption,
    subject_sample,
)
from studio.worlds.shapes import BACKGROUND_RGB, OBJECT_NOUNS  # noqa: E402


def test_the_family_names_parse_back_and_the_held_out_split_is_fixed():
    subjects = all_subjects()
    assert len(subjects) == len(SILHOUETTES) * (len(PATTERNS) - 1) * 8 * 7 + len(SILHOUETTES) * 8
    assert len({s.name for s in subjects}) == len(subjects)
    assert all(Subject.parse(s.name) == s for s in subjects)
    held, train = all_subjects("held_out"), all_subjects("train")
    assert len(held) + len(train) == len(subjects) and not {s.name for s in held} & {s.name for s in train}
    assert 0.09 < len(held) / len(subjects) < 0.16
    # every part is seen in training; only the combinations are new
    for part in ("silhouette", "pattern", "primary"):
        assert {getattr(s, part) for s in train} == {getattr(s, part) for s in subjects}
    assert subject_by_name("held-out:0") == held[0]
    with pytest.raises(ValueError, match=r"held-out:K with K in 0\.\."):
        subject_by_name(f"held-out:{len(held)}")
    with pytest.raises(ValueError, match="unknown silhouette"):
        Subject.parse("blob-solid-red")
    with pytest.raises(ValueError, match="needs 2 different colour"):
        Subject.parse("heart-stripes-red-red")


def test_a_solid_subject_is_its_colour_composited_by_its_mask():
    subject = Subject("diamond", "solid", "blue", "blue")
    image, mask = render_subject(subject, np.random.default_rng(0), background="white", jitter=False)
    bg, fg = np.array(BACKGROUND_RGB["white"], float), np.array(OBJECT_RGB["blue"], float)
    expected = bg + mask[..., None] * (fg - bg)
    assert np.abs(image - expected).max() <= 0.5 + 1e-6
    # the diamond |u|/0.7 + |v| <= r has area 1.4 r^2
    assert float(mask.sum()) == pytest.approx(1.4 * 10.0**2, rel=0.02)
    assert mask.min() >= 0 and mask.max() <= 1


def test_patterns_use_both_colours_inside_the_mask_only():
    subject = Subject("hexagon", "split", "red", "yellow")
    image, mask = render_subject(subject, np.random.default_rng(1), position="top left", background="navy")
    full = image[mask == 1].astype(float)
    near = lambda c: (np.abs(full - OBJECT_RGB[c]).max(-1) < 40).mean()  # noqa: E731
    assert near("red") > 0.3 and near("yellow") > 0.3 and near("red") + near("yellow") > 0.9  # two halves
    ys, xs = np.nonzero(mask > 0.5)
    assert xs.mean() < 13 and ys.mean() < 13  # top left
    assert not np.array_equal(reference_image(subject), image)
    assert np.array_equal(reference_image(subject), reference_image(subject))


def test_subject_captions_point_at_their_class_word():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sample = subject_sample(all_subjects("train")[int(rng.integers(100))], rng)
        assert any(sample.text[sample.start :].startswith(noun + w) for noun in OBJECT_NOUNS for w in (" ", ".", ""))
        assert sample.image.shape == (32, 32, 3) and sample.mask.shape == (32, 32)
    text, start = subject_caption({"position": "left", "size": "large", "background": "gray"}, rng, "held_out")
    assert text[start:].split()[0].strip(".") in OBJECT_NOUNS


def test_world_cli_writes_a_subject_folder(tmp_path, capsys):
    out = tmp_path / "s"
    assert (
        main(["--quiet", "world", "shapes", "--subject", "heart-stripes-red-yellow", "--n", "3", "--out", str(out)])
        == 0
    )
    images = sorted(out.glob("*.png"))
    assert [p.name for p in images] == ["subject-00.png", "subject-01.png", "subject-02.png"]
    assert all((out / "masks" / p.name).is_file() for p in images)
    assert np.array_equal(
        read_image(out / "reference" / "reference.png"), reference_image(Subject.parse("heart-stripes-red-yellow"))
    )
    assert main(["world", "shapes", "--subject", "heart-foo", "--out", str(tmp_path / "x")]) == 2
    assert "unknown pattern 'foo'" in capsys.readouterr().err
    assert main(["world", "synth", "--subject", "heart-solid-red", "--out", str(tmp_path / "y")]) == 2
    assert "--subject" in capsys.readouterr().err and not (tmp_path / "y").exists()
