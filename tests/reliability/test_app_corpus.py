"""The app refuses bad input: every handler turns it into one ``gr.Error`` naming the field, writes nothing, and
keeps serving; two Start-training clicks at once start one run; eight users at once are all served."""

from __future__ import annotations

import threading
import zipfile

import gradio as gr
import pytest

from studio.app.handlers import Handlers
from studio.app.service import Studio

G = ("runs/a", "a red circle", "", 1, 2.0, 0, 1, "saved")  # model, prompt, negative, steps, guidance, seed, count, ...
M = ("runs/music", "a tune", "", 1, 2.0, 0, 1, None, "saved")  # ..., count, length, scheduler


def image(**change):
    names = ["model", "prompt", "negative", "steps", "guidance", "seed", "count", "scheduler", "adapter", "strength"]
    names += ["rescale", "guided_below"]
    values = dict(zip(names, [*G, "", 1.0, 0.0, 1.0], strict=True)) | change
    return ("generate_image", tuple(values.values()))


def music(**change):
    names = ["model", "prompt", "negative", "steps", "guidance", "seed", "count", "length", "scheduler"]
    return ("generate_music", tuple((dict(zip(names, M, strict=True)) | change).values()))


def merge(count, *models, weights=(), prompt="a red circle", steps=1):
    models = list(models) + [""] * (4 - len(models))
    weights = list(weights) + [1.0] * (4 - len(weights))
    return ("merge_preview", (count, prompt, 0, steps, 2.0, True, *models, *weights))


CASES: list[tuple[tuple[str, tuple], str]] = [
    # image tab
    (image(prompt=""), "prompt is empty"),
    (image(prompt="   "), "prompt is empty"),
    (image(prompt="x" * 501), "the limit is 500"),
    (image(negative="n" * 501), "negative prompt has 501 characters"),
    (image(negative="n" * 1_000_000), "negative prompt has 1000000 characters"),
    (image(steps=0), "steps must be a whole number from 1 to 200"),
    (image(steps=201), "steps must be a whole number"),
    (image(steps=2.5), "steps must be a whole number, got 2.5"),
    (image(steps=None), "steps is empty"),
    (image(steps=float("nan")), "steps must be a whole number"),
    (image(guidance=-1.0), "guidance must be a number from 0 to 30"),
    (image(guidance=1e308), "guidance must be a number from 0 to 30"),
    (image(guidance=float("nan")), "guidance must be"),
    (image(guidance=None), "guidance is empty"),
    (image(seed=-1), "seed must be"),
    (image(seed=2**70), "seed must be"),
    (image(seed=None), "seed is empty"),
    (image(count=0), "count must be a whole number from 1 to 16"),
    (image(count=17), "count must be a whole number from 1 to 16"),
    (image(count=-1), "count must be"),
    (image(scheduler="magic"), "scheduler &#x27;magic&#x27; is unknown"),
    (image(model=""), "no model picked"),
    (image(model="/etc"), "unknown model &#x27;/etc&#x27;"),
    (image(model="../../etc/passwd"), "unknown model"),
    (image(model="runs/music"), "pick an image model"),
    (image(adapter="runs/none.safetensors"), "unknown adapter"),
    (image(rescale=2.0), "guidance-rescale must be a finite number from 0 to 1"),
    (image(rescale=None), "guidance rescale is empty"),
    (image(guided_below=0.0), "guidance-interval must satisfy"),
    (image(guided_below=5.0), "guidance-interval must satisfy"),
    # music tab
    (music(prompt=""), "prompt is empty"),
    (music(length=0.001), "must be a positive multiple"),
    (music(length=-1.0), "length must be a number of seconds in (0, 60]"),
    (music(length=1e9), "length must be a number of seconds in (0, 60]"),
    (music(length=float("nan")), "length must be"),
    (music(count=5), "count must be a whole number from 1 to 4"),
    (music(model="runs/a"), "pick an audio model"),
    (music(steps=0), "steps must be"),
    # merge tab
    (merge(-1, "runs/a", "runs/b"), "number of models must be from 2 to 4"),
    (merge(1, "runs/a"), "number of models must be from 2 to 4"),
    (merge(9, "runs/a", "runs/b"), "number of models must be from 2 to 4"),
    (merge(2.5, "runs/a", "runs/b"), "number of models must be a whole number"),
    (merge(2, "runs/a", "runs/a"), "picked twice"),
    (merge(2, "runs/a", "runs/wide"), "architecture"),
    (merge(2, "runs/a", "runs/music"), "cannot merge"),
    (merge(2, "runs/a", "/etc"), "unknown model"),
    (merge(2, "runs/a", "runs/b", weights=(1.0, float("nan"))), "finite weight"),
    (merge(2, "runs/a", "runs/b", weights=(0.0, 0.0)), "sum to 0"),
    (merge(2, "runs/a", "runs/b", prompt=""), "prompt is empty"),
    (merge(2, "runs/a", "runs/b", steps=0), "steps must be"),
    # save merge
    (
        ("save_merge", (2, True, "", "runs/a", "runs/b", "", "", 1.0, 1.0, 1.0, 1.0)),
        "name &#x27;&#x27; is not allowed",
    ),
    (("save_merge", (2, True, "../evil", "runs/a", "runs/b", "", "", 1.0, 1.0, 1.0, 1.0)), "is not allowed"),
    (("save_merge", (2, True, "/etc", "runs/a", "runs/b", "", "", 1.0, 1.0, 1.0, 1.0)), "is not allowed"),
    (("save_merge", (2, True, "a", "runs/a", "runs/b", "", "", 1.0, 1.0, 1.0, 1.0)), "runs/a already exists"),
    (("save_merge", (2, True, "x" * 65, "runs/a", "runs/b", "", "", 1.0, 1.0, 1.0, 1.0)), "is not allowed"),
    # training
    (("train_start", ("", "", "")), "unknown recipe"),
    (("train_start", ("nope", "", "")), "unknown recipe"),
    (("train_start", ("finetune", "out=/tmp/x", "")), "the app chooses where runs are written"),
    (("train_start", ("finetune", "export=/tmp/x", "")), "the app chooses where runs are written"),
    (("train_start", ("finetune", "class_dir=/tmp/x", "")), "the app chooses where runs are written"),
    (("train_start", ("finetune", "data.dir=/etc", "")), "inside the app&#x27;s working folder"),
    (("train_start", ("finetune", "data.dir=../../../../etc", "")), "inside the app&#x27;s working folder"),
    (("train_start", ("finetune", "data.dir=nothing-here", "")), "is not a folder in the app&#x27;s working folder"),
    (("train_start", ("finetune", "base=/etc", "")), "unknown model &#x27;/etc&#x27;"),
    (("train_start", ("finetune", "base=facebook/musicgen-small", "")), "unknown model"),
    (("train_start", ("pretrain-shapes", "init=/tmp/model", "")), "unknown model"),
    (("train_start", ("finetune", "num_workers=500", "")), "num_workers=500 is over the app&#x27;s limit"),
    (("train_start", ("finetune", "max_steps=1000000000", "")), "max_steps=1000000000 is over the app"),
    (("train_start", ("finetune", "batch_size=100000", "")), "batch_size=100000 is over the app"),
    (("train_start", ("finetune", "max_minutes=100000", "")), "is over the app"),
    (("train_start", ("finetune", "lr=nan", "")), "expected a finite number"),
    (("train_start", ("finetune", "max_steps=ten", "")), "expected int"),
    (("train_start", ("finetune", "nope=1", "")), "unknown config key"),
    (("train_start", ("finetune", "just text", "")), "is not key=value"),
    (("train_start", ("finetune", "", "../x")), "is not allowed"),
    # evaluate
    (("evaluate", ("runs/a", "", 2, 1, 0)), "no guidance scales"),
    (("evaluate", ("runs/a", "1, two", 2, 1, 0)), "&#x27;two&#x27; is not a number"),
    (("evaluate", ("runs/a", "1, nan", 2, 1, 0)), "finite number"),
    (("evaluate", ("runs/a", "1, 40", 2, 1, 0)), "from 0 to 30"),
    (("evaluate", ("runs/a", "1 2 3 4 5 6 7 8 9", 2, 1, 0)), "1 to 8 guidance scales"),
    (("evaluate", ("runs/a", "1, 1", 2, 1, 0)), "distinct"),
    (("evaluate", ("runs/a", "1, 2", 1, 1, 0)), "samples per prompt must be"),
    (("evaluate", ("/etc", "1, 2", 2, 1, 0)), "unknown model"),
    # settings and imports
    (("set_attention", ("magic",)), "attention backend &#x27;magic&#x27; is unknown"),
    (("set_attention", (None,)), "attention backend &#x27;&#x27; is unknown"),
    (("import_model", (None, "x")), "no file uploaded"),
]


@pytest.fixture
def handlers(workdir, no_embedded, fake_trainer):
    studio = Studio(workdir, train_command=fake_trainer(steps=40, delay=0.05))
    yield Handlers(studio)
    studio.close()


def files_under(folder):
    return (
        sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    )


def test_the_app_corpus_is_large():
    assert len(CASES) >= 80


@pytest.mark.parametrize(("call", "message"), CASES, ids=[f"{c[0]}-{i}" for i, (c, _) in enumerate(CASES)])
def test_bad_app_input_is_one_gr_error_and_writes_nothing(handlers, call, message):
    workdir = handlers.studio.workdir
    before = files_under(workdir)
    name, args = call
    with pytest.raises(gr.Error) as info:
        getattr(handlers, name)(*args)
    assert message in info.value.message and "\n" not in info.value.message, info.value.message
    assert files_under(workdir) == before
    assert handlers.studio.training_status().state == "idle"


def test_damaged_uploads_are_refused(handlers, tmp_path, model_store):
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((model_store / "a").rglob("*")):
            if path.is_file():
                zf.write(path, "model/" + path.relative_to(model_store / "a").as_posix())
    data = bytearray(damaged.read_bytes())
    data[200:260] = b"\xff" * 60  # corrupt the first member's compressed bytes
    damaged.write_bytes(bytes(data))
    (tmp_path / "text.zip").write_text("not a zip")
    before = files_under(handlers.studio.workdir)
    for upload, message in [(damaged, "is a damaged zip archive"), (tmp_path / "text.zip", "is not a zip archive")]:
        with pytest.raises(gr.Error, match=message):
            handlers.import_model(str(upload), "uploaded")
    assert files_under(handlers.studio.workdir) == before


def test_two_start_clicks_at_once_start_one_run(handlers):
    barrier, results = threading.Barrier(2), []

    def click():
        barrier.wait()
        try:
            handlers.studio.start_training("finetune", "", None)
            results.append("started")
        except ValueError as err:
            results.append(str(err))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("started") == 1, results
    assert any("is still running" in r for r in results), results
    status = handlers.studio.cancel_training()
    assert status.state in ("cancelled", "finished")
    assert len(list((handlers.studio.workdir / "logs").glob("*.log"))) == 1
