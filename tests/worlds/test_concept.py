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
