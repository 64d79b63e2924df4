"""The app's service object: everything the web UI does, as plain Python methods that tests call directly.

:class:`Studio` owns the model cache, the device policy, the live merge and the training run; it checks
user input with ``ValueError`` (the UI turns those into ``gr.Error``) and writes files only inside its
working folder::

    workdir/
      outputs/image/<stamp>/   0000.png ..., grid.png, manifest.json   (generate_image)
      outputs/music/<stamp>/   0000.wav ..., grid.png, manifest.json   (generate_music)
      runs/<name>/             trained, merged and imported pipelines    (list_models scans here)
      runs/<name>/*.safetensors  adapters of finetune runs               (list_adapters scans here)
      runs/<name>/moa.safetensors  mixture-of-attention runs             (list_moa scans here)
      evals/<stamp>/           guidance sweeps                          (evaluate)
      logs/<name>.log          training process output
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import studio
from studio.app.inputs import (
    MAX_CLIPS,
    MAX_IMAGES,
    MAX_PER_PROMPT,
    Modality,
    Progress,
    check_adapter_scale,
    check_guidance_refinements,
    check_int,
    check_name,
    check_negative_prompt,
    check_prompt,
    check_sampling,
    check_scales,
    check_scheduler,
    check_training_overrides,
    fit_subject,
    parse_overrides,
    parse_scales,
    steps_reporter,
)
from studio.app.merge import MergeActions, MergePreview  # noqa: F401 (the service's result types)
from studio.app.models import AdapterInfo, MoAInfo, ModelCatalog, ModelInfo
from studio.app.separate import SeparateActions, Separation  # noqa: F401
from studio.app.training import TrainingJob, TrainingStatus, train_argv
from studio.app.uploads import MAX_UPLOAD_BYTES, import_pipeline_zip
from studio.threads import available_cores

logger = logging.getLogger(__name__)

#: Settings the app owns when it starts a run: every path a trainer writes to stays inside the workdir.
APP_OWNED_KEYS = ("out", "export", "class_dir")


@dataclass
class Generation:
    """Files and arrays of one generate call.

    Attributes:
        folder: the output folder (``manifest.json`` and ``grid.png`` inside).
        files: one PNG or WAV per sample.
        samples: images ``(H, W, 3)`` uint8 or waveforms ``(T,)`` float32.
        spectrograms: per clip, an ``(H, F, 3)`` uint8 spectrogram (music only).
        sample_rate: audio sample rate (music only).
        router_files: with a MoA, per image the router map over it (``router/NNNN.png``: magenta where the
            personalised branch drew); empty otherwise.
    """

    folder: Path
    files: list[Path]
    samples: list[np.ndarray]
    spectrograms: list[np.ndarray]
    sample_rate: int | None
    router_files: list[Path] = dataclasses.field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"


@dataclass
class Evaluation:
    """A guidance sweep run by the app: the report, its folder and its adherence-diversity plot."""

    report: studio.SweepReport
    folder: Path

    @property
    def plot(self) -> Path:
        return self.folder / "sweep.png"

    def rows(self) -> list[dict[str, float | None]]:
        """One row per guidance scale for a table."""
        return [
            {
                "guidance": p.guidance,
                "adherence": round(p.adherence, 4),
                "diversity": None if p.diversity is None else round(p.diversity, 4),
                "frechet": round(p.frechet, 3),
                "s_per_sample": round(p.seconds_per_sample, 4),
            }
            for p in self.report.points
        ]


class Studio(MergeActions, SeparateActions):
    """Model cache, device policy and every action of the app; files go only under ``workdir``.

    Args:
        workdir: the app's working folder (created on demand).
        device: torch device for generation (``cpu`` by default; ``cuda`` only if available).
        cache_size: loaded pipelines kept (least recently used evicted first).
        models: local pipeline folders to offer besides the embedded models and ``runs/`` (the operator's
            choice, e.g. ``mixstudio serve --model PATH``; the browser still picks by name only).
        max_upload_bytes: size limit of an imported model archive.
        train_command: builds a training run's argv from ``(recipe, overrides, out)`` (tests inject a fast fake).
        compile: compile each model's UNet when it is first loaded (``mixstudio serve --compile``).
    """

    def __init__(
        self,
        workdir: str | Path = "studio-app",
        *,
        device: str = "cpu",
        cache_size: int = 3,
        models: Sequence[str | Path] = (),
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        train_command: Callable[[str, list[str], Path], list[str]] = train_argv,
        compile: bool = False,
    ):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no GPU is available; use device='cpu'")
        self.workdir = Path(workdir).absolute()
        self.runs_dir = self.workdir / "runs"
        self.models = ModelCatalog(self.runs_dir, self.device, cache_size, [Path(m) for m in models], compile)
        self.max_upload_bytes, self.train_command = max_upload_bytes, train_command
        self._lock = threading.RLock()  # pipelines are not thread-safe (the scheduler holds state)
        self._live: studio.LiveMerge | None = None
        self._live_key: tuple | None = None
        self._job: TrainingJob | None = None
        self._start_lock = threading.Lock()

    # ---- models --------------------------------------------------------------------------------
    def list_models(self, modality: Modality | None = None) -> list[ModelInfo]:
        """Embedded models that are present, the local folders given, then pipeline folders under ``runs/``."""
        return self.models.list(modality)

    def list_adapters(self, model: str | None = None) -> list[AdapterInfo]:
        """Adapter files under ``runs/`` whose base model is listed (only those of ``model`` if given)."""
        return self.models.list_adapters(model)

    def list_moa(self, model: str | None = None) -> list[MoAInfo]:
        """Mixture-of-attention runs under ``runs/`` whose base model is listed (only those of ``model`` if given)."""
        return self.models.list_moa(model)

    def resolve(self, model: str, modality: Modality | None = None) -> ModelInfo:
        """The listed model called ``model`` (only listed models load: no arbitrary paths from the browser).

        Raises:
            ValueError: for an empty or unknown name, or a model of the other modality.
        """
        return self.models.resolve(model, modality)

    @staticmethod
    def samplers() -> list[str]:
        """Sampler names a generation may ask for instead of the model's saved one."""
        return sorted(studio.SCHEDULERS)

    # ---- generation ----------------------------------------------------------------------------
    def generate_image(
        self,
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        steps: int = 25,
        guidance: float = studio.default_guidance("image"),
        seed: int = 0,
        count: int = 1,
        scheduler: str | None = None,
        adapter: str | None = None,
        adapter_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        moa: str | None = None,
        subject: np.ndarray | None = None,
        moa_strength: float = 1.0,
        progress: Progress | None = None,
    ) -> Generation:
        """Generate ``count`` images for ``prompt`` into ``outputs/image/<stamp>/`` (sample ``k`` uses ``seed + k``).

        Args:
            adapter: a listed adapter of ``model`` to sample with (None: the model alone).
            adapter_scale: its strength; orthogonal adapters stay rotations at every strength.
            guidance_rescale, guidance_interval: see :class:`studio.guidance.Guidance` (defaults: off, every step).
            moa: a listed mixture-of-attention run of ``model`` (None: none); the prompt marks the subject with
                ``sks`` before its class word, and the result carries router maps (:attr:`Generation.router_files`).
            subject: the subject's picture (any size, cropped and resized) for a MoA run that reads one.
            moa_strength: the personalised branch's strength (0: the base model, 1: as trained).

        Raises:
            ValueError: for an unknown or non-image model, an adapter or MoA run of another model, an empty or
                too long prompt, a MoA prompt without its identifier, a missing or surplus subject picture, or
                settings out of range.
        """
        return self._generate(
            "image", model, prompt, count, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
            seed=seed, scheduler=scheduler, length_s=None, adapter=adapter, adapter_scale=adapter_scale,
            guidance_rescale=guidance_rescale, guidance_interval=guidance_interval, progress=progress,
            personalise=self._personalisation(model, prompt, moa, subject, moa_strength, scheduler) if moa else {},
        )  # fmt: skip

    def _personalisation(
        self, model: str, prompt: str, moa: str, subject: object, strength: float, scheduler: str | None
    ) -> dict:
        """``studio.generate``'s MoA arguments for the listed run ``moa`` of ``model``, checked."""
        from studio.attention.moa import IDENTIFIER, check_strength, split_prompt

        info = self.models.resolve_moa(moa, self.resolve(model, "image").name)
        check_strength(strength)
        if split_prompt(prompt).start is None:
            raise ValueError(
                f"prompt {prompt!r} does not name the subject: put {IDENTIFIER!r} before its class word, "
                f"e.g. 'a {IDENTIFIER} shape on a navy background', or pick MoA none"
            )
        if info.mode == "encoder" and subject is None:
            raise ValueError(f"MoA run {moa!r} reads the subject from a picture: upload one, or pick MoA none")
        if info.mode == "subject" and subject is not None:
            raise ValueError(f"MoA run {moa!r} was trained on one subject of its own; clear the subject picture")
        with self._lock:  # the pipeline generation will use (the cache holds one per model and sampler)
            size = self.models.pipeline(model, scheduler or None).default_size
        picture = None if subject is None else fit_subject(subject, size)
        return {"moa": info.path, "subject": picture, "moa_strength": float(strength)}

    def generate_music(
        self,
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        steps: int = 25,
        guidance: float = studio.default_guidance("audio"),
        seed: int = 0,
        count: int = 1,
        length_s: float | None = None,
        scheduler: str | None = None,
        adapter: str | None = None,
        adapter_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        progress: Progress | None = None,
    ) -> Generation:
        """Generate ``count`` clips into ``outputs/music/<stamp>/``, with a spectrogram per clip.

        Args:
            length_s: clip length in seconds (None: the model's training length).
            adapter, adapter_scale, guidance_rescale, guidance_interval: as :meth:`generate_image`.

        Raises:
            ValueError: as :meth:`generate_image`, and for a clip length the model cannot make.
        """
        return self._generate(
            "audio", model, prompt, count, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
            seed=seed, scheduler=scheduler, length_s=length_s, adapter=adapter, adapter_scale=adapter_scale,
            guidance_rescale=guidance_rescale, guidance_interval=guidance_interval, progress=progress,
        )  # fmt: skip

    def _generate(
        self, modality: Modality, model: str, prompt: str, count: int, *, negative_prompt, steps, guidance, seed,
        scheduler, length_s, adapter, adapter_scale, guidance_rescale, guidance_interval, progress, personalise=None,
    ) -> Generation:  # fmt: skip
        info = self.resolve(model, modality)
        adapters = [] if not adapter else [(self._adapter_of(adapter, info.name).path, adapter_scale)]
        if adapters:
            check_adapter_scale(adapter_scale)
        check_prompt(prompt)
        check_negative_prompt(negative_prompt)
        check_int("count", count, 1, MAX_IMAGES if modality == "image" else MAX_CLIPS)
        check_sampling(steps, guidance, seed)
        check_guidance_refinements(guidance_rescale, guidance_interval)
        check_scheduler(scheduler)
        if length_s is not None and not (isinstance(length_s, (int, float)) and 0 < length_s <= 60):
            raise ValueError(f"length must be a number of seconds in (0, 60], got {length_s!r}")
        out = self._new_folder("outputs", "image" if modality == "image" else "music")
        with self._lock:
            samples = studio.generate(
                self.models.pipeline(model, scheduler or None),
                prompt,
                num_per_prompt=count,
                negative_prompt=negative_prompt or None,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                guidance_rescale=float(guidance_rescale),
                guidance_interval=tuple(guidance_interval),
                seed=seed,
                audio_length_in_s=float(length_s) if length_s else None,
                adapters=adapters,
                progress=steps_reporter(progress, f"sampling {count} x {steps} steps"),
                name=info.source,
                **(personalise or {}),
            )
        samples.settings |= {"scheduler": scheduler or "saved"}
        folder = studio.write_samples(samples, out, world=studio.model_world(info.source, modality))
        suffix = ".png" if modality == "image" else ".wav"
        files = [folder / f"{i:04d}{suffix}" for i in range(count)]
        rate = samples.sample_rate
        spectrograms = [studio.spectrogram_image(s, rate) for s in samples.data] if rate else []
        router = [folder / "router" / f"{i:04d}.png" for i in range(count)] if samples.router_maps else []
        return Generation(
            folder=folder, files=files, samples=samples.data, spectrograms=spectrograms, sample_rate=rate,
            router_files=router,
        )  # fmt: skip

    # ---- training ------------------------------------------------------------------------------
    @staticmethod
    def recipes() -> dict[str, str]:
        """Recipe names and their one-line descriptions."""
        return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in sorted(studio.RECIPES.items())}

    def start_training(self, recipe: str, overrides: list[str] | str = (), name: str | None = None) -> TrainingStatus:
        """Start ``mixstudio train RECIPE --set ... --out runs/<name>`` as a subprocess.

        Args:
            recipe: a name from :data:`studio.recipes.RECIPES`.
            overrides: ``key=value`` strings, or text with one per line (blank lines and ``#`` comments skipped).
            name: run folder name under ``runs/`` (default: ``<recipe>-<time>``).

        Raises:
            ValueError: for an unknown recipe, a bad override (checked here, before anything starts), an
                override of an app-owned key (``out``, ``export``), a taken name, or a run still going.
        """
        items = parse_overrides(overrides) if isinstance(overrides, str) else [o.strip() for o in overrides]
        owned = [o for o in items if o.partition("=")[0].strip() in APP_OWNED_KEYS]
        if owned:
            raise ValueError(f"override {owned[0]!r}: the app chooses where runs are written (runs/<name>); remove it")
        studio.apply_overrides(studio.get_recipe(recipe), items)  # validates recipe, keys and values before starting
        items = check_training_overrides(items, lambda m: self.resolve(m).source, self.workdir, available_cores())
        with self._start_lock:  # two clicks at once start one run: the check and the start are one step
            if self._job is not None and self._job.running:
                raise ValueError(f"training run {self._job.name!r} is still running; cancel it or wait for it to end")
            name = name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
            out = self._new_run_folder(name)
            argv = self.train_command(recipe, items, out)
            self._job = TrainingJob(name, argv, out, self.workdir / "logs" / f"{name}.log", cwd=self.workdir)
            return self._job.status()

    def training_status(self) -> TrainingStatus:
        """Status of the current or last run (``idle`` when none was started)."""
        return self._job.status() if self._job is not None else TrainingStatus()

    def cancel_training(self) -> TrainingStatus:
        """Stop the running training process (its last checkpoint stays); a no-op when none runs."""
        if self._job is not None:
            self._job.cancel()
        return self.training_status()

    def close(self) -> None:
        """Cancel a running training process and drop loaded models."""
        self.cancel_training()
        with self._lock:
            self.models.clear()
            self._live = self._live_key = None

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self,
        model: str,
        scales: list[float] | str,
        *,
        per_prompt: int = 2,
        steps: int = 25,
        seed: int = 0,
        show_progress: bool = False,
    ) -> Evaluation:
        """Guidance sweep of ``model`` on its world's held-out prompts, written to ``evals/<stamp>/``.

        Args:
            scales: guidance scales, or text such as ``"1, 2, 4"``.
            per_prompt: samples per prompt (2 to ``MAX_PER_PROMPT``).
            show_progress: emit tqdm bars (the UI tracks them).

        Raises:
            ValueError: for an unknown model, bad scales or settings out of range.
        """
        info = self.resolve(model)
        values = check_scales(parse_scales(scales) if isinstance(scales, str) else list(scales))
        check_int("samples per prompt", per_prompt, 2, MAX_PER_PROMPT)
        check_sampling(steps, 1.0, seed)
        out = self._new_folder("evals", re.sub(r"[^A-Za-z0-9._-]+", "-", info.name))
        with self._lock:
            report = studio.guidance_sweep(
                info.source,
                info.modality,
                values,
                out=out,
                per_prompt=per_prompt,
                steps=steps,
                seed=seed,
                progress=show_progress,
            )
        return Evaluation(report=dataclasses.replace(report, model=info.name), folder=out)

    # ---- uploads -------------------------------------------------------------------------------
    def import_model(self, archive: str | Path, name: str, progress: Progress | None = None) -> ModelInfo:
        """Import an uploaded zip of a pipeline folder as ``runs/<name>`` (see :func:`import_pipeline_zip`).

        ``progress`` is called with ``(fraction, description)`` before unpacking and before the load check.

        Raises:
            ValueError: for a bad or taken name, and everything :func:`import_pipeline_zip` refuses.
        """
        import_pipeline_zip(archive, self._new_run_folder(name), self.max_upload_bytes, progress)
        return self.resolve(f"runs/{name}")

    def warm_up(self, model: str | None = None) -> float:
        """Sample one image of ``model`` (default: the first listed image model) at the app's defaults, writing
        nothing, so that loading (and compiling) is paid before the first user asks; returns the seconds it took."""
        start = time.perf_counter()
        names = [m.name for m in self.list_models("image")]
        if model is None and not names:
            return 0.0
        with self._lock:
            pipe = self.models.pipeline(model or names[0])
            studio.generate(
                pipe, "a red circle", num_inference_steps=25, guidance_scale=studio.default_guidance("image")
            )
        return time.perf_counter() - start

    # ---- settings ------------------------------------------------------------------------------
    @staticmethod
    def attention_backends() -> list[str]:
        """The attention backends a user may pick (``studio.attention.BACKENDS``)."""
        from studio.attention import BACKENDS

        return sorted(BACKENDS)

    def set_attention(self, name: str) -> str:
        """Send every model's attention through backend ``name`` from now on; returns a one-line summary.

        Raises:
            ValueError: for an unknown backend name.
        """
        from studio.attention import available_backends

        if name not in self.attention_backends():
            raise ValueError(f"attention backend {name!r} is unknown; pick one of {self.attention_backends()}")
        with self._lock:
            switched = self.models.set_attention(name)
        reason = available_backends(self.device)[name]
        note = "" if reason is None else f"; it cannot run here ({reason}), so sampling falls back to sdpa"
        return f"attention backend: {name} ({switched} layers of the loaded models switched{note})"

    # ---- folders -------------------------------------------------------------------------------
    def _new_folder(self, *parts: str) -> Path:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return self.workdir.joinpath(*parts, stamp)

    def _new_run_folder(self, name: str) -> Path:
        check_name(name)
        out = self.runs_dir / name
        if out.exists():
            raise ValueError(f"runs/{name} already exists; choose another name")
        return out
