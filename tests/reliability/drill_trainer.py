"""A tiny training run that can SIGKILL itself at a chosen point (the kill -9 drill of test_kill_drill.py).

Usage: python drill_trainer.py OUT [mid-step|checkpoint-files|before-latest|before-prune]
"""

import os
import signal
import sys
from pathlib import Path

import studio.trainers.checkpoint as checkpoint
from studio.trainers.pretrain import PretrainConfig, PretrainTrainer

KILL_STEP = 4


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, point = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    config = PretrainConfig(
        world="shapes", out=out, channels=(16, 32), attention_levels=(1,), batch_size=4, max_steps=6, lr=1e-3,
        checkpoint_every=2, log_every=1, sample_every=0, sample_prompts=1, grid_steps=1, seed=3,
    )  # fmt: skip
    trainer = PretrainTrainer(config)
    if point == "mid-step":
        real = trainer.train_step

        def step(batch):
            if trainer.step == KILL_STEP - 1:
                die()
            return real(batch)

        trainer.train_step = step
    elif point == "checkpoint-files":  # inside the temporary folder: weights written, the rest not yet
        real_save = checkpoint.save_file

        def save_file(tensors, path):
            real_save(tensors, path)
            if trainer.step == KILL_STEP and Path(path).name == "model.safetensors":
                die()

        checkpoint.save_file = save_file
    elif point == "before-latest":  # the folder is in place, the pointer still names the one before
        real_write = checkpoint.atomic_write_text

        def write(path, text):
            if trainer.step == KILL_STEP and Path(path).name == "latest":
                die()
            real_write(path, text)

        checkpoint.atomic_write_text = write
    elif point == "before-prune":
        real_rmtree = checkpoint.shutil.rmtree

        class Shutil:
            @staticmethod
            def rmtree(path, ignore_errors=False):
                if trainer.step == 6:  # the first checkpoint with an older one to prune (2 are kept)
                    die()
                real_rmtree(path, ignore_errors=ignore_errors)

        checkpoint.shutil = Shutil
    trainer.fit()


if __name__ == "__main__":
    main()
