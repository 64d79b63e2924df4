"""The one trainer skeleton: config, fit loop, checkpoints, resume, logging, sampling during training.

Methods subclass :class:`Trainer` and implement ``build``, ``train_step`` and (optionally)
``evaluate`` and ``export``; the loop is shared.

Determinism: the data stream is indexed by global step (step ``s`` reads samples
``s·B … s·B + B − 1`` of the world's seed stream) and every per-sample random draw (noise,
timestep, condition dropout) comes from a generator seeded by ``(seed, step, sample index)``.
So a resumed run replays exactly, and N data-parallel processes that each take ``B/N`` of
the samples compute the same update as one process with the whole batch.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from studio.config import to_dict
from studio.io import atomic_dir, atomic_write_text
from studio.models.zoo import Role
from studio.trainers.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    read_checkpoint,
    remove_orphans,
    truncate_log,
    write_checkpoint,
)
from studio.trainers.config import TrainerConfig, cosine_with_warmup
from studio.trainers.launch import check_process_count, make_accelerator

if TYPE_CHECKING:
    from studio.evaluation import EvalReport

logger = logging.getLogger(__name__)


class Trainer(ABC):
    """Shared fit loop. Subclasses set ``self.model`` (the trainable module) and ``self.optimizer`` in ``build``."""

    config: TrainerConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, config: TrainerConfig, accelerator: Accelerator | None = None, command: str = ""):
        self.config = config
        self.command = command
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        check_process_count(self.accelerator)
        self.step = 0
        self._evaluating = 0.0  # seconds spent in evaluate() during fit (left out of train_seconds)
        self.out = Path(config.out)
        if config.batch_size % self.accelerator.num_processes:
            raise ValueError(
                f"batch_size {config.batch_size} must divide evenly across {self.accelerator.num_processes} processes"
            )

    # ---- to implement -----------------------------------------------------------------------
    @abstractmethod
    def build(self) -> None:
        """Create the model(s), ``self.model`` (trainable) and ``self.optimizer``."""

    @abstractmethod
    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on this process's batch of the current step (what :meth:`load_batch` returned), and metrics."""

    def load_batch(self, step: int, indices: list[int]) -> Any:
        """The model-free work of one step: this process's samples ``indices`` at ``step``.

        Runs in a data process when ``num_workers > 0``, so it must not touch the model, the optimizer or
        ``self.step`` (it is given ``step``). The default hands the indices to :meth:`train_step` as they are.
        """
        return indices

    def evaluate(self) -> dict[str, float]:
        """Sampling/metrics during training (default: none). Called on the main process."""
        return {}

    def export(self, metrics: dict[str, float]) -> Path | None:
        """Write the final artefact (a pipeline folder, an adapter file) and its card; main process only."""
        return None

    def write_model(self, save: Callable[[Path], None], metrics: dict[str, float], card: str | None) -> Path:
        """The one export: ``out/model`` (and the config's ``export`` folder, if it has one), each written whole.

        Each folder gets what ``save(folder)`` writes (``save_pretrained``), ``train_config.json``,
        ``train_metrics.json`` and, given a card, ``README.md``; it is built in a temporary sibling and renamed.

        Returns:
            The last folder written.
        """
        export = getattr(self.config, "export", None)
        targets = [self.out / "model"] + ([Path(export)] if export else [])
        for target in targets:
            with atomic_dir(target, name="export") as tmp:
                save(tmp)
                atomic_write_text(tmp / "train_config.json", json.dumps(to_dict(self.config), indent=2) + "\n")
                atomic_write_text(tmp / "train_metrics.json", json.dumps(metrics, indent=2) + "\n")
                if card is not None:
                    atomic_write_text(tmp / "README.md", card)
        logger.info("exported %s", ", ".join(str(t) for t in targets))
        return targets[-1]

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors besides the trainable weights that a checkpoint must hold (e.g. EMA weights)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`extra_state`."""

    # ---- shared -----------------------------------------------------------------------------
    def local_indices(self, step: int) -> list[int]:
        """This process's sample indices at ``step`` (a contiguous slice of the global batch)."""
        n, rank = self.accelerator.num_processes, self.accelerator.process_index
        per = self.config.batch_size // n
        start = step * self.config.batch_size + rank * per
        return list(range(start, start + per))

    def leading(self, indices: list[int], count: int) -> list[int]:
        """Positions in ``indices`` (this process's samples) of the global batch's first ``count`` samples.

        A process may hold all, some or none of them; together the processes hold each exactly once.
        """
        return [k for k, i in enumerate(indices) if i % self.config.batch_size < count]

    def batches(self) -> Iterator[Any]:
        """This process's batches from the current step to ``max_steps`` (prepared ahead when ``num_workers > 0``)."""
        steps = range(self.step, self.config.max_steps)
        if self.config.num_workers == 0:
            return (self.load_batch(step, self.local_indices(step)) for step in steps)
        loader = DataLoader(
            _StepBatches(self, steps),
            batch_size=None,  # an item is already one step's batch
            collate_fn=_as_is,
            num_workers=self.config.num_workers,
            prefetch_factor=4,
        )
        return iter(loader)

    def setup(self) -> None:
        """Build, wrap with accelerate, and resume if asked."""
        torch.manual_seed(self.config.seed)
        self.build()
        if self.config.attention is not None:
            from studio.attention import set_backend

            set_backend(self.model, self.config.attention)
        self.lr_scheduler = cosine_with_warmup(self.optimizer, self.config.lr_warmup_steps, self.config.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.accelerator.is_main_process:
            remove_orphans(self.out / CHECKPOINTS)
        latest = self.latest_checkpoint() if self.config.resume else None
        if latest is not None:
            self.load_checkpoint(latest)
            if self.accelerator.is_main_process:
                for file in ("log.csv", "evaluate.csv"):
                    truncate_log(self.out / file, self.step)

    def fit(self) -> dict[str, float]:
        """Train to ``max_steps`` (or the time budget); returns the last logged metrics."""
        self.setup()
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(to_dict(self.config), indent=2) + "\n")
        start, metrics, evaluated, evaluated_at, saved_at = time.time(), {}, {}, -1, self.step
        bar = tqdm(
            total=self.config.max_steps,
            initial=self.step,
            desc=type(self).__name__,
            unit="step",
            # tqdm reads TQDM_DISABLE (set by `mixstudio --quiet`) only for arguments a bar leaves out
            disable=not self.accelerator.is_main_process or os.environ.get("TQDM_DISABLE") == "1",
        )
        batches = self.batches()
        while self.step < self.config.max_steps:
            metrics = self.optimizer_step(next(batches))
            bar.update()
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]})
            if self.step % self.config.log_every == 0:
                elapsed = round(time.time() - start, 2)
                self.log({"step": self.step, "seconds": elapsed, "lr": self.lr_scheduler.get_last_lr()[0], **metrics})
            out_of_time = self.config.max_minutes is not None and time.time() - start > 60 * self.config.max_minutes
            if self.step % self.config.checkpoint_every == 0 or out_of_time:
                self.save_checkpoint()
                saved_at = self.step
            if self.config.sample_every and self.step % self.config.sample_every == 0:
                evaluated, evaluated_at = self.evaluate_and_log(start, metrics), self.step
            if out_of_time:
                logger.warning("time budget of %s min spent at step %d; stopping", self.config.max_minutes, self.step)
                break
        bar.close()
        if saved_at != self.step:
            self.save_checkpoint()
        if evaluated_at != self.step:
            evaluated = self.evaluate_and_log(start, metrics)
        minutes, processes = (time.time() - start) / 60, self.accelerator.num_processes
        metrics = {**metrics, **evaluated, "train_minutes": minutes, "steps": self.step, "processes": processes}
        if self.accelerator.is_main_process:
            self.export(metrics)
        return metrics

    def optimizer_step(self, batch: Any = None) -> dict[str, float]:
        """One update on ``batch`` (by default this process's batch of the current step, loaded here)."""
        if batch is None:
            batch = self.load_batch(self.step, self.local_indices(self.step))
        self.model.train()
        loss, metrics = self.train_step(batch)
        self._check_finite(loss, "the loss")
        self.accelerator.backward(loss)
        self.apply_gradients()
        self.lr_scheduler.step()
        self.step += 1
        self.after_step()
        # every process logs the means over all processes (one collective for all the numbers)
        values = torch.tensor([loss.item(), *metrics.values()], device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean").tolist()
        return dict(zip(["loss", *metrics], values, strict=True))

    def apply_gradients(self) -> None:
        """Clip the accumulated gradients, check their norm, take the optimizer step and clear them.

        :meth:`optimizer_step` calls it once per step; a method whose step holds several updates (DDPO's inner
        epochs) calls it for each update but the last, which the skeleton takes.
        """
        clip = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), clip)
        self._check_finite(norm, "the gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        """Stop training at this step, before the update, when ``value`` is NaN or inf (any process)."""
        bad = torch.tensor(0.0 if torch.isfinite(value).all() else 1.0, device=self.accelerator.device)
        if self.accelerator.reduce(bad, reduction="sum").item() > 0:
            latest = self.latest_checkpoint()
            kept = f"the last good checkpoint is {str(latest)!r}" if latest else "no checkpoint was written"
            raise ValueError(
                f"step {self.step + 1}: {what} is not finite (NaN or inf); training stopped and {kept}; lower lr, "
                "set grad_clip, or check the data"
            )

    def after_step(self) -> None:
        """Hook after each optimizer step (EMA updates)."""

    def sample_grid(
        self,
        pipe: Any,
        prompts: Sequence[str],
        *,
        per_prompt: int = 2,
        judge: Role | None = "eval",
        seeds: Sequence[int] | None = None,
        cols: int | None = None,
        **sampling: Any,
    ) -> EvalReport | None:
        """Sample ``prompts`` (``grid_steps`` steps, seed 0), write ``samples/step-<step>.png``, and judge them.

        Args:
            pipe: the pipeline to sample (the trainer's current weights).
            prompts: the grid's prompts, ``per_prompt`` samples each.
            judge: the judge role that scores the samples against their prompts (None: the grid only).
            seeds, cols: explicit seeds (:func:`studio.generate`) and grid columns (default: ``per_prompt``-wide).
            sampling: further :func:`studio.generate` arguments (``guidance_scale``, ...).

        Returns:
            The judge's report (Fréchet distance skipped), or None without a judge. Needs ``self.world``.
        """
        from studio.evaluation import score_samples
        from studio.generation import generate
        from studio.io import write_png
        from studio.plots import image_grid, spectrogram_grid

        samples = generate(pipe, prompts, num_per_prompt=per_prompt, num_inference_steps=self.config.grid_steps,
                           seeds=seeds, **sampling)  # fmt: skip
        if samples.modality == "image":
            grid = image_grid(samples.data[:64], cols=cols or per_prompt * max(1, 8 // per_prompt))
        else:
            grid = spectrogram_grid(samples.data[:16], samples.sample_rate, cols=cols or per_prompt)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        write_png(self.out / "samples" / f"step-{self.step:08d}.png", grid)
        if judge is None:
            return None
        return score_samples(samples.data, samples.prompts, self.world, role=judge, reference_size=0)

    def evaluate_and_log(self, start: float, metrics: dict[str, float]) -> dict[str, float]:
        """:meth:`evaluate`, with a row in ``evaluate.csv``: step, seconds since ``start`` less the time spent
        evaluating (``train_seconds``), the reward queries so far (where the trainer counts them), the scores."""
        began = time.time()
        evaluated = self.run_evaluate()
        if evaluated:
            trained = began - start - self._evaluating
            queries = {k: metrics[k] for k in ("reward_queries",) if k in metrics}
            row = {"step": self.step, "train_seconds": round(trained, 2), **queries, **evaluated}
            self.log(row, "evaluate.csv")
        self._evaluating += time.time() - began
        return evaluated

    def run_evaluate(self) -> dict[str, float]:
        if not self.accelerator.is_main_process:
            return {}
        return self.evaluate()

    def log(self, row: dict[str, Any], file: str = "log.csv") -> None:
        """Append ``row`` to the CSV ``file`` of the run folder (main process; the header is the first row's keys)."""
        if not self.accelerator.is_main_process:
            return
        path = self.out / file
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    # ---- checkpoints ------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Weights of the trainable parameters (what a checkpoint restores into ``self.model``)."""
        model = self.accelerator.unwrap_model(self.model)
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state`."""
        self.accelerator.unwrap_model(self.model).load_state_dict(state)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-XXXXXXXX`` whole and point ``latest`` at it (main process)."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        extra = {k: v.detach().cpu().contiguous() for k, v in self.extra_state().items()}
        extra["rng.torch"] = torch.get_rng_state()
        optimizer = {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
        return write_checkpoint(
            self.out / CHECKPOINTS, self.step, self.trainable_state(), extra, optimizer, to_dict(self.config),
            self.config.keep_checkpoints,
        )  # fmt: skip

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``checkpoints/latest`` names (None: none yet)."""
        return latest_checkpoint(self.out / CHECKPOINTS)

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, step and RNG from a checkpoint folder.

        The learning rate is the config's: a changed ``lr`` applies from the resumed step on (with a warning),
        instead of being overwritten by the saved optimizer state.

        Raises:
            ValueError: for unreadable files, or weights or optimizer state that do not fit this run's model
                (another adapter rank, another architecture), naming the file and the fix.
        """
        saved = read_checkpoint(path)
        try:
            self.load_trainable_state(saved.model)
            self.optimizer.load_state_dict(saved.optimizer["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit this run's model ({first[:160]}); the run was started with "
                "another architecture or adapter settings: use a new --out, or the settings it was started with"
            ) from None
        torch.set_rng_state(saved.extra.pop("rng.torch"))
        self.load_extra_state(saved.extra)
        self.lr_scheduler.load_state_dict(saved.optimizer["lr_scheduler"])
        self.step = saved.step
        self._apply_config_lr(float(saved.config.get("lr", self.config.lr)))
        logger.info("resumed from %s at step %d", path, self.step)

    def _apply_config_lr(self, saved_lr: float) -> None:
        """Make the schedule's peak lr the config's, whatever the checkpoint's optimizer held."""
        if saved_lr != self.config.lr:
            logger.warning("lr changed from %g to %g on resume; the schedule continues with %g", saved_lr,
                           self.config.lr, self.config.lr)  # fmt: skip
        self.lr_scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        factor = self.lr_scheduler.lr_lambdas[0](self.lr_scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = self.config.lr, self.config.lr * factor


class _StepBatches(Dataset):
    """Item ``k``: the trainer's batch at the ``k``-th of ``steps`` (what a data process prepares)."""

    def __init__(self, trainer: Trainer, steps: range):
        self.trainer, self.steps = trainer, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> Any:
        step = self.steps[k]
        return self.trainer.load_batch(step, self.trainer.local_indices(step))


def _as_is(batch: Any) -> Any:
    return batch
