"""The Gradio layer: build_ui builds without loading models, and every handler maps values and errors."""

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from gradio.helpers import special_args

from studio.app.handlers import Handlers, whole
from studio.app.inputs import MAX_CLIPS, MAX_MERGE
from studio.app.service import Evaluation, Studio
from studio.app.ui import DEFAULT_MUSIC_PROMPT, DEFAULT_PROMPT, build_ui
from studio.cli import build_parser, main
from studio.evaluation import SweepPoint, SweepReport
from studio.io import read_image, write_png
from studio.worlds import get_world


@pytest.fixture
def studio(workdir, no_embedded, fake_trainer):
    service = Studio(workdir, train_command=fake_trainer(steps=3, delay=0.02))
    yield service
    service.close()


@pytest.fixture
def handlers(studio):
    return Handlers(studio)


def test_build_ui_has_the_tabs_and_a_bounded_queue_and_loads_nothing(studio):
    demo = build_ui(studio)
    assert isinstance(demo, gr.Blocks)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == ["Image", "Music", "Merge", "Train", "Separate", "Evaluate", "Models"]
    assert demo._queue.max_size == 16 and demo._queue.default_concurrency_limit == 1
    assert studio.models._cache == {}  # nothing loads until an event runs
    sliders = [b for b in demo.blocks.values() if isinstance(b, gr.Slider) and (b.elem_id or "").startswith("merge-w")]
    assert len(sliders) == MAX_MERGE
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for tab in ("image", "music"):  # an adapter picker that starts at "none", and a strength slider beside it
        assert isinstance(by_id[f"{tab}-adapter"], gr.Dropdown) and by_id[f"{tab}-adapter"].value == ""
        assert (by_id[f"{tab}-adapter-strength"].minimum, by_id[f"{tab}-adapter-strength"].maximum) == (-3, 3)
    refresh = next(d for d in demo.fns.values() if d.fn.__name__ == "refresh_all")
    outputs = refresh.fn(*[None] * len(refresh.inputs))  # what a page load and the refresh button run
    assert len(outputs) == len(refresh.outputs)
    assert outputs[-1]["name"].tolist() == [m.name for m in studio.list_models()]  # the models table
    heavy = [d for d in demo.fns.values() if d.concurrency_id == "compute"]
    assert len(heavy) >= 6 and all(d.concurrency_limit == 1 for d in heavy)


def test_long_events_get_a_progress_tracker_and_a_finished_run_refreshes_the_pickers(studio):
    demo = build_ui(studio)
    tracked = ["generate_image", "generate_music", "merge_preview", "quality_diversity_preview", "save_merge"]
    for name in [*tracked, "import_model", "evaluate"]:
        events = [d for d in demo.fns.values() if d.fn.__name__ == name]
        assert events, name
        for event in events:  # Gradio inserts its tracker where it finds a gr.Progress default: after the inputs
            _, progress_index, *_ = special_args(event.fn, inputs=[None] * len(event.inputs))
            assert progress_index == len(event.inputs), name
    poll = next(d for d in demo.fns.values() if d.fn.__name__ == "train_poll")
    trained = poll.outputs[-1]
    assert isinstance(trained, gr.State)
    refreshes = [d for d in demo.fns.values() if d.fn.__name__ == "refresh_all"]
    assert any((trained._id, "change") in [tuple(t) for t in d.targets] for d in refreshes)


@pytest.mark.parametrize(
    ("world", "prompt", "labels"),
    [
        ("shapes", DEFAULT_PROMPT, {"colour": "red", "shape": "circle", "background": "navy"}),
        ("synth", DEFAULT_MUSIC_PROMPT, {"tempo": "fast", "mode": "minor", "lead": "bell", "drums": "rock"}),
    ],
)
def test_default_prompts_speak_their_worlds_vocabulary(world, prompt, labels):
    # words outside the world mislead: "blue background" reads as a second colour, "piano" as no instrument
    assert get_world(world).parse_prompt(prompt) == labels


def test_importing_the_app_package_loads_neither_gradio_nor_models():
    code = "import sys, studio, studio.app; print('gradio' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_image_handler_returns_a_gallery_and_the_manifest(handlers):
    gallery, manifest, status = handlers.generate_image("runs/a", "a red circle", "", 2.0, 4.0, 7.0, 2.0, "saved")
    assert [caption for _, caption in gallery] == ["seed 7", "seed 8"]
    assert all(read_image(path).shape == (32, 32, 3) for path, _ in gallery)
    assert manifest.endswith("manifest.json") and "2 image(s)" in status
    # the refinement sliders: rescale and the top of the guided noise levels
    _, manifest, _ = handlers.generate_image("runs/a", "a red circle", "", 2, 4.0, 7, 1, "saved", "", 1.0, 0.5, 0.4)
    meta = json.loads(Path(manifest).read_text())["meta"]
    assert meta["guidance_rescale"] == 0.5 and meta["guidance_interval"] == [0.0, 0.4]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("runs/a", "", "", 2, 4.0, 0, 1, "saved"), "prompt is empty"),
        (("runs/a", "x", "", 2.5, 4.0, 0, 1, "saved"), "steps must be a whole number, got 2.5"),
        (("runs/a", "x", "", 2, None, 0, 1, "saved"), "guidance is empty"),
        (("runs/a", "x", "", 2, 4.0, None, 1, "saved"), "seed is empty"),
        (("gone", "x", "", 2, 4.0, 0, 1, "saved"), "unknown model"),
        (("runs/a", "x", "", 2, 4.0, 0, 1, "<b>magic</b>"), "scheduler &#x27;&lt;b&gt;magic&lt;/b&gt;&#x27;"),
        (("runs/a", "x", "", 2, 4.0, 0, 1, "saved", "", 1.0, None), "guidance rescale is empty"),
    ],
)
def test_image_handler_turns_bad_input_into_gr_error(handlers, args, message):
    with pytest.raises(gr.Error) as info:
        handlers.generate_image(*args)
    assert message in info.value.message  # user text is HTML-escaped: the toast renders HTML


def test_music_handler_shows_one_player_and_spectrogram_per_clip(handlers):
    outputs = handlers.generate_music("runs/music", "a tune", "", 1, 1.0, 0, 2, 0, "saved")
    audios, spectrograms = outputs[:MAX_CLIPS], outputs[MAX_CLIPS : 2 * MAX_CLIPS]
    assert [a.visible for a in audios] == [True, True, False, False]
    assert audios[0].value["path"].endswith("0000.wav")
    assert [s.visible for s in spectrograms] == [True, True, False, False]
    assert outputs[-2].endswith("manifest.json") and "2 clip(s)" in outputs[-1]


def test_quality_diversity_handler_previews_and_refuses_bad_values(handlers, studio, model_store, no_embedded):
    for name, source in (("shapes-quality", "a"), ("shapes-diversity", "b")):
        shutil.copytree(model_store / source, no_embedded / "models" / name)
    image, audio, mix = handlers.quality_diversity_preview("shapes", 0.25, "a red circle", 0, 2)
    assert image.shape == (32, 32, 3) and audio.visible is False
    assert mix == "UNet = 0.75·`shapes-quality` + 0.25·`shapes-diversity`"
    with pytest.raises(gr.Error, match="between 0 and 1"):
        handlers.quality_diversity_preview("shapes", 2, "a red circle", 0, 2)


def test_merge_handlers_preview_changes_with_the_weight_and_save(handlers, studio):
    rows = ["runs/a", "runs/b", None, None], [0.5, 0.5, 0.5, 0.5]
    settings = (2, "a red circle", 0, 2, 4.0, True)
    first, audio, mix = handlers.merge_preview(*settings, *rows[0], *rows[1])
    assert first.shape == (32, 32, 3) and audio.visible is False and mix == "UNet = 0.5·`runs/a` + 0.5·`runs/b`"
    moved, _, mix = handlers.merge_preview(*settings, *rows[0], 0.9, 0.1, 0.5, 0.5)
    assert np.abs(moved.astype(int) - first).max() > 0 and mix.startswith("UNet = 0.9·")
    assert [r.visible for r in handlers.merge_rows(3)] == [True, True, True, False]
    assert "Saved `runs/mixed`" in handlers.save_merge(2, True, " mixed ", *rows[0], 0.9, 0.1, 0.5, 0.5)
    assert "runs/mixed" in [value for _, value in handlers.choices("image")]
    with pytest.raises(gr.Error, match="picked twice"):
        handlers.merge_preview(*settings, "runs/a", "runs/a", None, None, *rows[1])
    with pytest.raises(gr.Error, match="weight 2 is empty"):
        handlers.merge_preview(*settings, *rows[0], 0.5, None, 0.5, 0.5)


def test_train_handlers_start_poll_and_stop_the_timer(handlers):
    summary, loss, sample, log, timer, saved = handlers.train_poll()
    assert summary == "No training run yet." and loss.empty and sample is None and timer.active is False
    assert saved == ""
    assert handlers.train_start("pretrain-shapes", "max_steps=3", "ui-run")[4].active in (True, False)
    deadline = time.monotonic() + 30
    while (outputs := handlers.train_poll())[4].active and time.monotonic() < deadline:
        time.sleep(0.1)
    summary, loss, sample, log, timer, saved = outputs
    assert timer.active is False and "**finished**" in summary and "`runs/ui-run/model`" in summary
    assert saved == "runs/ui-run/model" and saved in [value for _, value in handlers.choices("image")]
    assert isinstance(loss, pd.DataFrame) and list(loss["step"]) == [1.0, 2.0, 3.0]
    assert sample.endswith("step-00000002.png") and "step 3/3" in log
    with pytest.raises(gr.Error, match="the app chooses where runs are written"):
        handlers.train_start("pretrain-shapes", "out=/tmp/x", "")
    assert handlers.train_cancel()[0].startswith("**finished**")


def test_evaluate_handler_returns_table_plot_and_reports(handlers, studio, monkeypatch):
    # the sweep itself is tested in test_service.py; here a saved one is mapped to the components
    folder = studio.workdir / "evals" / "runs-a" / "stamp"
    folder.mkdir(parents=True)
    write_png(folder / "sweep.png", np.zeros((300, 400, 3), dtype=np.uint8))
    point = SweepPoint(2.0, 0.5, {"color": 0.5}, 0.1, 12.0, 0.01, "guidance-2")
    report = SweepReport("runs/a", "shapes", "eval", 1, 2, 48, [dataclasses.replace(point, guidance=1.0), point])
    calls = []

    def evaluate(model, scales, **kwargs):
        calls.append((model, scales, kwargs))
        return Evaluation(report=report, folder=folder)

    with monkeypatch.context() as patch:
        patch.setattr(studio, "evaluate", evaluate)
        table, plot, files, markdown = handlers.evaluate("runs/a", "1 2", 2.0, 1.0, 0.0)
    assert calls == [("runs/a", "1 2", {"per_prompt": 2, "steps": 1, "seed": 0, "show_progress": True})]
    assert list(table["guidance"]) == [1.0, 2.0] and list(table["adherence"]) == [0.5, 0.5]
    assert plot == str(folder / "sweep.png")
    assert "world shapes" in markdown and "`evals/runs-a/stamp/`" in markdown
    assert [f.rsplit("/", 1)[1] for f in files] == ["sweep.json", "sweep.md"]
    with pytest.raises(gr.Error, match="not a number"):
        handlers.evaluate("runs/a", "1, x", 2, 1, 0)


def test_models_handlers_list_refresh_and_refuse_a_missing_upload(handlers):
    assert list(handlers.models_table()["name"]) == ["runs/a", "runs/b", "runs/music", "runs/wide"]
    update = handlers.dropdown("runs/gone", "audio")
    assert update.value == "runs/music" and update.choices == [("runs/music · music", "runs/music")]
    with pytest.raises(gr.Error, match="no file uploaded"):
        handlers.import_model(None, "x")


def test_whole_numbers_from_components():
    assert whole("steps", 3.0) == 3 and whole("steps", 4) == 4
    for bad in (None, "", 2.5, float("nan")):
        with pytest.raises(ValueError, match="steps"):
            whole("steps", bad)


def test_serve_defaults_to_localhost_without_a_share_link_and_refuses_bad_ports_and_models(capsys, tmp_path):
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.share, str(args.workdir)) == ("127.0.0.1", 7860, False, "studio-app")
    assert main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --port must be from 1 to 65535") and err.count("\n") == 1
    args = build_parser().parse_args(["serve", "--model", "runs/x", "--model", "/data/y"])
    assert args.model == [Path("runs/x"), Path("/data/y")]
    workdir = tmp_path / "app"
    assert main(["serve", "--workdir", str(workdir), "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder") and "model_index.json" in err and err.count("\n") == 1
    assert not workdir.exists()  # refused before anything was written
