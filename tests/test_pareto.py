"""``mixstudio eval --pareto``: the CFG curve, unguided students and their merges, scored by both judges."""

import json

import numpy as np
import pytest
import torch

from studio.cli import main
from studio.evaluation import evaluate_folder
from studio.evaluation.pareto import ParetoPoint, pareto_eval, plot_series
from studio.io import read_image
from studio.models.unet import with_guidance_input
from studio.pipelines import StudioImagePipeline


@pytest.fixture(scope="module")
def perturbed_student(tiny_shapes_folder, tmp_path_factory):
    """The tiny shapes model with every UNet weight nudged: a stand-in for a trained diversity student."""
    pipe = StudioImagePipeline.from_pretrained(tiny_shapes_folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=generator))
    folder = tmp_path_factory.mktemp("student") / "diverse"
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_pareto_scores_cfg_students_and_merges_with_both_judges(
    tmp_path, capsys, tiny_shapes_folder, perturbed_student
):
    out = tmp_path / "pareto"
    args = ["--quiet", "eval", "--pareto", "image", "--model", str(tiny_shapes_folder), "--guidance", "1", "3"]
    args += ["--quality", str(tiny_shapes_folder), "--diversity", str(perturbed_student), "--lambdas", "0", "1"]
    args += ["-n", "2", "--steps", "1", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert "beats CFG at" in capsys.readouterr().out

    report = json.loads((out / "pareto.json").read_text())
    points = {(p["method"], p["setting"]): p for p in report["points"]}
    assert list(points) == [
        ("CFG", "w=1"), ("CFG", "w=3"), ("quality student (β = 0)", "w=1"), ("diversity student (β > 0)", "w=1"),
        ("merge", "λ=0"), ("merge", "λ=1"),
    ]  # fmt: skip
    for point in report["points"]:
        folder = out / point["folder"]
        assert point["adherence"] == pytest.approx(evaluate_folder(folder).adherence)
        assert point["reward_adherence"] == pytest.approx(evaluate_folder(folder, role="reward").adherence)
        cfg = [c for c in report["points"] if c["method"] == "CFG"]
        beaten = [
            c["setting"] for c in cfg if point["adherence"] > c["adherence"] and point["diversity"] > c["diversity"]
        ]
        assert point["dominates"] == ([] if point["method"] == "CFG" else beaten)

    def image(point):
        return read_image(out / points[point]["folder"] / "0000.png").astype(int)

    # the merge slider's ends are the two students themselves, and they differ
    assert np.array_equal(image(("merge", "λ=0")), image(("quality student (β = 0)", "w=1")))
    assert np.array_equal(image(("merge", "λ=1")), image(("diversity student (β > 0)", "w=1")))
    assert not np.array_equal(image(("merge", "λ=0")), image(("merge", "λ=1")))
    assert read_image(out / "pareto.png").std() > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quality", "shapes"], "both --quality and --diversity"),
        (["--lambdas", "1.5"], "[0, 1]"),
        (["-n", "1"], "at least 2"),
        (["--student", "beta 0.5=no/such/model"], "cannot load image model 'no/such/model'"),
    ],
)
def test_pareto_rejects_bad_settings_before_sampling(
    tmp_path, capsys, monkeypatch, tiny_shapes_folder, extra, message
):
    def sample(*args, **kwargs):
        raise AssertionError("sampled before the settings were checked")

    monkeypatch.setattr("studio.evaluation.pareto.sample_and_score", sample)
    out = tmp_path / "pareto"
    args = ["--quiet", "eval", "--pareto", "image", "--model", str(tiny_shapes_folder), "--out", str(out), *extra]
    if "--quality" not in extra:
        args += ["--quality", str(tiny_shapes_folder), "--diversity", str(tiny_shapes_folder)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_guidance_conditioned_student_is_scored_at_every_w_of_the_cfg_curve(tmp_path, tiny_shapes_folder):
    pipe = StudioImagePipeline.from_pretrained(tiny_shapes_folder)
    pipe.unet = with_guidance_input(pipe.unet)
    with torch.no_grad():  # a trained-looking guidance input, so w changes the samples
        pipe.unet.time_embedding.cond_proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    pipe.save_pretrained(tmp_path / "w-student")
    report = pareto_eval(
        str(tiny_shapes_folder), "image", out=tmp_path / "pareto", students={"w-student": str(tmp_path / "w-student")},
        scales=(1.0, 3.0), per_prompt=2, steps=1, progress=False,
    )  # fmt: skip
    points = {(p.method, p.setting): p for p in report.points}
    assert list(points) == [("CFG", "w=1"), ("CFG", "w=3"), ("w-student", "w=1"), ("w-student", "w=3")]
    folders = [tmp_path / "pareto" / points[("w-student", w)].folder for w in ("w=1", "w=3")]
    assert not np.array_equal(read_image(folders[0] / "0000.png"), read_image(folders[1] / "0000.png"))


def test_the_plot_walks_the_merge_slider_from_the_quality_to_the_diversity_student():
    def point(method, setting, x, y):
        return ParetoPoint(method, setting, "m", 1.0, y, x, y, x, 1.0, "f")

    points = [
        point("CFG", "w=1", 0.20, 0.10), point("CFG", "w=4", 0.17, 0.14),
        point("quality student (β = 0)", "w=1", 0.15, 0.22), point("diversity student (β > 0)", "w=1", 0.19, 0.16),
        point("merge", "λ=0.75", 0.18, 0.20), point("merge", "λ=0.25", 0.16, 0.21),
    ]  # fmt: skip
    series = plot_series(points, "shapes")
    assert list(series)[:2] == ["shapes + CFG", "merges (slider)"]  # students are drawn over the slider's ends
    assert series["shapes + CFG"] == [(0.20, 0.10, "w=1"), (0.17, 0.14, "w=4")]
    assert series["quality student (β = 0)"] == [(0.15, 0.22, "")]
    assert [label for _, _, label in series["merges (slider)"]] == ["λ=0", "λ=0.25", "λ=0.75", "λ=1"]
    assert series["merges (slider)"][0][:2] == (0.15, 0.22) and series["merges (slider)"][-1][:2] == (0.19, 0.16)
