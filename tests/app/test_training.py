"""Training from the app: a subprocess per run, status read from its files, cancel, and refusals."""

import time

import pytest

from studio.app.service import Studio
from studio.app.training import TrainingStatus, read_log_csv, tail


def wait_for(studio: Studio, done, timeout: float = 60.0) -> TrainingStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = studio.training_status()
        if done(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"training did not reach the expected state in {timeout} s: {studio.training_status()}")


def test_a_run_reports_progress_loss_samples_and_its_model(workdir, no_embedded, fake_trainer):
    studio = Studio(workdir, train_command=fake_trainer(steps=4, delay=0.05))
    assert studio.training_status().state == "idle"
    started = studio.start_training("pretrain-shapes", "max_steps=4\n# a comment\n\nbatch_size=2", name="tiny")
    assert started.name == "tiny" and started.state in ("running", "finished")
    status = wait_for(studio, lambda s: s.state != "running")
    assert status.state == "finished" and status.returncode == 0
    assert status.step == 4 and status.max_steps == 4 and status.fraction == 1.0
    assert [r["loss"] for r in status.rows] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert status.latest_sample == workdir / "runs" / "tiny" / "samples" / "step-00000002.png"
    assert "step 4/4" in status.log_tail and "**finished**" in status.summary() and "loss 0.25" in status.summary()
    assert status.model == workdir / "runs" / "tiny" / "model"
    assert "runs/tiny/model" in [m.name for m in studio.list_models("image")]
    assert (workdir / "logs" / "tiny.log").is_file()
    with pytest.raises(ValueError, match="runs/tiny already exists"):
        studio.start_training("pretrain-shapes", [], name="tiny")


def test_cancel_stops_the_process_and_a_second_run_waits_for_the_first(workdir, no_embedded, fake_trainer):
    studio = Studio(workdir, train_command=fake_trainer(steps=10_000, delay=0.05))
    studio.start_training("pretrain-shapes", [], name="long")
    wait_for(studio, lambda s: s.step >= 2)
    with pytest.raises(ValueError, match="'long' is still running; cancel it"):
        studio.start_training("pretrain-shapes", [], name="other")
    start = time.monotonic()
    status = studio.cancel_training()
    assert status.state == "cancelled" and time.monotonic() - start < 10
    assert studio._job.process.poll() is not None  # really gone, not just marked
    assert studio.cancel_training().state == "cancelled"  # cancelling again is a no-op
    assert "**cancelled**" in status.summary()


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("nope", [], "unknown recipe 'nope'"),
        ("pretrain-shapes", ["max_steps=ten"], "expected int"),
        ("pretrain-shapes", ["no_such_key=1"], "unknown config key 'no_such_key'"),
        ("pretrain-shapes", "max_steps 10", "not key=value"),
        ("pretrain-shapes", ["out=/tmp/elsewhere"], "the app chooses where runs are written"),
        ("pretrain-shapes", ["export=/tmp/elsewhere"], "the app chooses where runs are written"),
        ("finetune", ["class_dir=/tmp/elsewhere"], "the app chooses where runs are written"),
    ],
)
def test_bad_recipes_and_overrides_are_refused_before_anything_starts(
    workdir, no_embedded, fake_trainer, recipe, overrides, message
):
    studio = Studio(workdir, train_command=fake_trainer())
    with pytest.raises(ValueError, match=message):
        studio.start_training(recipe, overrides, name="refused")
    assert studio.training_status().state == "idle" and not (workdir / "runs" / "refused").exists()


@pytest.mark.slow
def test_a_real_tiny_recipe_trains_and_exports_a_listed_model(workdir, no_embedded):
    # the default command (`python -m studio train ...`): a 2-step pretrain of a 16/32-channel UNet
    studio = Studio(workdir)
    overrides = ["channels=16,32", "attention_levels=1", "batch_size=2", "max_steps=2", "log_every=1"]
    overrides += ["sample_prompts=1", "checkpoint_every=100", "lr_warmup_steps=0"]
    studio.start_training("pretrain-shapes", overrides, name="real")
    status = wait_for(studio, lambda s: s.state != "running", timeout=240)
    assert status.state == "finished", status.log_tail
    assert [r["step"] for r in status.rows] == [1.0, 2.0] and status.max_steps == 2
    assert status.latest_sample is not None and status.latest_sample.name == "step-00000002.png"
    assert "runs/real/model" in [m.name for m in studio.list_models("image")]
    image = studio.generate_image("runs/real/model", "a red circle", steps=1)
    assert image.samples[0].shape == (32, 32, 3)


def test_log_readers_tolerate_partial_files(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,")  # the last row is being written
    assert read_log_csv(log) == [{"step": 1.0, "loss": 0.5}, {"step": 2.0, "loss": 0.4}, {"step": 3.0}]
    assert read_log_csv(tmp_path / "missing.csv") == []
    out = tmp_path / "out.log"
    out.write_text("start\nbar  10%\rbar  50%\rbar 100%\ndone\n")
    assert tail(out, lines=2) == "bar 100%\ndone"
