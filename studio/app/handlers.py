"""Event handlers: the boundary between Gradio components and the :class:`~studio.app.service.Studio` service.

Each handler converts component values (floats from sliders, ``None`` from cleared boxes) to the
service's types, calls one service method, and turns the result into component values. A library
``ValueError`` becomes a ``gr.Error`` here and nowhere else, so the user sees the message as a toast
and the server keeps answering.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from studio.app.inputs import MAX_CLIPS, MAX_MERGE
from studio.app.service import Studio
from studio.app.training import TrainingStatus

LOSS_COLUMNS = ["step", "loss"]
#: Players the Separate tab has room for (drums, bass, lead: three).
MAX_STEMS = 4
NO_ADAPTER = ""
#: Gradio swaps a ``gr.Progress`` default for a per-event tracker; one shared default instance is enough.
PROGRESS = gr.Progress()
TQDM_PROGRESS = gr.Progress(track_tqdm=True)


def boundary(fn: Callable) -> Callable:
    """Re-raise a ``ValueError`` from ``fn`` as ``gr.Error`` (HTML-escaped: messages quote user input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            raise gr.Error(html.escape(str(err)), print_exception=False) from None

    return wrapper


def whole(name: str, value: Any) -> int:
    """A component value as an int (sliders and number boxes send floats; a cleared box sends None).

    Raises:
        ValueError: for an empty box or a value with a fractional part.
    """
    if value is None or value == "":
        raise ValueError(f"{name} is empty; enter a whole number")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


def number(name: str, value: Any) -> float:
    """A component value as a float.

    Raises:
        ValueError: for an empty box.
    """
    if value is None or value == "":
        raise ValueError(f"{name} is empty; enter a number")
    return float(value)


def _reporter(progress: gr.Progress) -> Callable[[float, str], None]:
    """The service's ``progress(fraction, description)`` callback reporting to a Gradio tracker."""
    return lambda fraction, desc: progress(fraction, desc=desc)


class Handlers:
    """The app's event handlers, bound to one :class:`Studio` (tests call them directly)."""

    def __init__(self, studio: Studio):
        self.studio = studio

    # ---- separation ------------------------------------------------------------------------------
    @boundary
    def separate(self, model, source, upload, clip, seed, progress=PROGRESS) -> list:
        """Separate tab: a player and a spectrogram per stem (``MAX_STEMS`` each), the files, the scores, a status."""
        source = {"upload a file": "upload", "a clip from the Music tab": "clip"}.get(source, "world")
        seed = whole("world clip seed", seed) if source == "world" else None
        result = self.studio.separate(
            model or "", source, upload=upload, clip=clip, world_seed=seed, progress=_reporter(progress)
        )
        names = list(result.stems)[:MAX_STEMS]
        slots = names + [None] * (MAX_STEMS - len(names))
        players = [gr.Audio(value=str(result.stems[n]) if n else None, label=n or "", visible=bool(n)) for n in slots]
        pictures = [gr.Image(value=result.spectrograms[n] if n else None, visible=bool(n)) for n in slots]
        files = [str(p) for p in result.stems.values()]
        status = f"{result.source}: {len(names)} stems in `{result.folder.name}`"
        return [*players, *pictures, files, scores_table(result.scores, names), status]

    def separator_choices(self) -> gr.Dropdown:
        """The Separate tab's separator picker, refreshed."""
        names = self.studio.list_separators()
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def clip_choices(self, current: str | None = None) -> gr.Dropdown:
        """The Separate tab's picker of clips made in the Music tab, newest first (``current`` kept if listed)."""
        clips = self.studio.music_clips()
        return gr.Dropdown(choices=clips, value=current if current in clips else (clips[0] if clips else None))

    # ---- settings --------------------------------------------------------------------------------
    @boundary
    def set_attention(self, name: str | None) -> str:
        """Switch the attention backend of every model (the Settings picker)."""
        return self.studio.set_attention(name or "")

    # ---- models ----------------------------------------------------------------------------------
    def choices(self, modality: str | None = None) -> list[tuple[str, str]]:
        """Dropdown choices ``(label, name)`` of the listed models; ``modality="merge"``: models, then adapters."""
        label = {"image": "image", "audio": "music"}
        models = self.studio.list_models(None if modality == "merge" else modality)
        choices = [(f"{m.name} · {label[m.modality]}", m.name) for m in models]
        if modality == "merge":
            choices += [(f"{a.name} · {a.method} adapter of {a.base}", a.name) for a in self.studio.list_adapters()]
        return choices

    def dropdown(self, current: str | None, modality: str | None = None) -> gr.Dropdown:
        """A dropdown update with fresh choices, keeping ``current`` when it is still listed."""
        return gr.Dropdown(choices=self.choices(modality), value=self.kept(current, modality))

    def kept(self, current: str | None, modality: str | None = None) -> str | None:
        """What a refreshed model picker shows: ``current`` while it is listed, else the first listed model."""
        names = [value for _, value in self.choices(modality)]
        return current if current in names else (names[0] if names else None)

    def adapter_choices(self, model: str | None) -> list[tuple[str, str]]:
        """Adapter picker choices for ``model``: ``none`` first, then its adapters under ``runs/``."""
        adapters = self.studio.list_adapters(model) if model else []
        return [("none", NO_ADAPTER)] + [(f"{a.name} · {a.method}", a.name) for a in adapters]

    def adapter_dropdown(self, model: str | None, current: str | None = NO_ADAPTER) -> gr.Dropdown:
        """The adapter picker for ``model``, keeping ``current`` when it still applies."""
        choices = self.adapter_choices(model)
        value = current if current in [v for _, v in choices] else NO_ADAPTER
        return gr.Dropdown(choices=choices, value=value)

    def models_table(self) -> pd.DataFrame:
        """Listed models, then the adapters and mixture-of-attention runs found under ``runs/``, as a table."""
        rows = [(m.name, m.modality, m.kind, m.source) for m in self.studio.list_models()]
        adapters = self.studio.list_adapters()
        rows += [(a.name, a.modality, f"{a.method} adapter of {a.base}", str(a.path)) for a in adapters]
        rows += [(m.name, "image", f"MoA ({m.mode}) of {m.base}", str(m.path)) for m in self.studio.list_moa()]
        return pd.DataFrame(rows, columns=["name", "modality", "kind", "source"])

    @boundary
    def import_model(self, upload: str | None, name: str, progress=PROGRESS) -> str:
        """Import an uploaded pipeline zip as ``runs/<name>``."""
        if not upload:
            raise ValueError("no file uploaded; choose a .zip of a pipeline folder")
        info = self.studio.import_model(upload, (name or "").strip(), progress=_reporter(progress))
        return f"Imported `{info.name}` ({info.modality})."

    # ---- image and music -------------------------------------------------------------------------
    def moa_choices(self, model: str | None) -> list[tuple[str, str]]:
        """MoA picker choices for ``model``: ``none`` first, then its mixture-of-attention runs under ``runs/``."""
        runs = self.studio.list_moa(model) if model else []
        kinds = {"encoder": "any subject (upload a picture)", "subject": "its own subject"}
        return [("none", NO_ADAPTER)] + [(f"{m.name} · {kinds.get(m.mode, m.mode)}", m.name) for m in runs]

    def moa_dropdown(self, model: str | None, current: str | None = NO_ADAPTER) -> gr.Dropdown:
        """The MoA picker for ``model``, keeping ``current`` when it still applies."""
        choices = self.moa_choices(model)
        value = current if current in [v for _, v in choices] else NO_ADAPTER
        return gr.Dropdown(choices=choices, value=value)

    @boundary
    def generate_image(
        self, model, prompt, negative, steps, guidance, seed, count, scheduler, adapter=NO_ADAPTER, strength=1.0,
        rescale=0.0, guided_below=1.0, moa=NO_ADAPTER, subject=None, moa_strength=1.0, show_router=True,
        progress=PROGRESS,
    ) -> tuple[list[tuple[str, str]], str, str]:  # fmt: skip
        """Image tab: returns gallery items (each image, then its router map when a MoA run is picked and
        ``show_router``), the manifest path and a status line."""
        result = self.studio.generate_image(
            model,
            prompt,
            negative_prompt=negative or None,
            steps=whole("steps", steps),
            guidance=number("guidance", guidance),
            seed=whole("seed", seed),
            count=whole("count", count),
            scheduler=None if scheduler in (None, "", "saved") else scheduler,
            adapter=adapter or None,
            adapter_scale=number("adapter strength", strength),
            guidance_rescale=number("guidance rescale", rescale),
            guidance_interval=(0.0, number("guided noise levels", guided_below)),
            moa=moa or None,
            subject=subject if moa else None,
            moa_strength=number("MoA strength", moa_strength),
            progress=_reporter(progress),
        )
        seed0 = whole("seed", seed)
        gallery = []
        for k, path in enumerate(result.files):
            gallery.append((str(path), f"seed {seed0 + k}"))
            if show_router and result.router_files:
                gallery.append((str(result.router_files[k]), f"seed {seed0 + k} · router (magenta: subject branch)"))
        note = "; router maps in `router/`" if result.router_files else ""
        return gallery, str(result.manifest), f"{len(result.files)} image(s) in `{result.folder.name}`{note}"

    @boundary
    def generate_music(
        self, model, prompt, negative, steps, guidance, seed, count, length, scheduler, adapter=NO_ADAPTER,
        strength=1.0, rescale=0.0, guided_below=1.0, progress=PROGRESS,
    ) -> list:  # fmt: skip
        """Music tab: returns ``MAX_CLIPS`` audio players, ``MAX_CLIPS`` spectrograms, the manifest, a status line."""
        result = self.studio.generate_music(
            model,
            prompt,
            negative_prompt=negative or None,
            steps=whole("steps", steps),
            guidance=number("guidance", guidance),
            seed=whole("seed", seed),
            count=whole("count", count),
            length_s=None if not length else number("length", length),
            scheduler=None if scheduler in (None, "", "saved") else scheduler,
            adapter=adapter or None,
            adapter_scale=number("adapter strength", strength),
            guidance_rescale=number("guidance rescale", rescale),
            guidance_interval=(0.0, number("guided noise levels", guided_below)),
            progress=_reporter(progress),
        )
        n = len(result.files)
        audios = [gr.Audio(value=str(result.files[i]) if i < n else None, visible=i < n) for i in range(MAX_CLIPS)]
        specs = [gr.Image(value=result.spectrograms[i] if i < n else None, visible=i < n) for i in range(MAX_CLIPS)]
        return [*audios, *specs, str(result.manifest), f"{n} clip(s) in `{result.folder.name}`"]

    # ---- merge -----------------------------------------------------------------------------------
    @staticmethod
    def merge_rows(count) -> list[gr.Row]:
        """Show the first ``count`` model rows of the Merge tab."""
        n = int(count or 2)
        return [gr.Row(visible=i < n) for i in range(MAX_MERGE)]

    @staticmethod
    def _picked(count, rows) -> tuple[list[str], list[float]]:
        n = whole("number of models", count)
        if not 2 <= n <= MAX_MERGE:
            raise ValueError(f"number of models must be from 2 to {MAX_MERGE}, got {n}")
        models, weights = list(rows[:MAX_MERGE]), list(rows[MAX_MERGE:])
        return [m or "" for m in models[:n]], [number(f"weight {i + 1}", w) for i, w in enumerate(weights[:n])]

    @boundary
    def merge_preview(self, count, prompt, seed, steps, guidance, normalize, *rows, progress=PROGRESS) -> tuple:
        """Merge tab: preview image (spectrogram for music), audio player and a line naming the weights used."""
        models, weights = self._picked(count, rows)
        preview = self.studio.merge_preview(
            models,
            weights,
            prompt=prompt,
            seed=whole("seed", seed),
            steps=whole("steps", steps),
            guidance=number("guidance", guidance),
            normalize=bool(normalize),
            progress=_reporter(progress),
        )
        return self._preview_outputs(preview)

    @boundary
    def quality_diversity_preview(self, world, diversity, prompt, seed, steps, progress=PROGRESS) -> tuple:
        """Merge tab: the quality↔diversity slider's preview (same outputs as :meth:`merge_preview`)."""
        preview = self.studio.quality_diversity_preview(
            world,
            number("λ", diversity),
            prompt=prompt,
            seed=whole("seed", seed),
            steps=whole("steps", steps),
            progress=_reporter(progress),
        )
        return self._preview_outputs(preview)

    @staticmethod
    def _preview_outputs(preview) -> tuple:
        audio = (preview.sample_rate, preview.audio) if preview.audio is not None else None
        mix = " + ".join(f"{w:.3g}·`{m}`" for m, w in zip(preview.models, preview.weights, strict=True))
        line = f"`{preview.base}` with adapters {mix}" if preview.base else f"UNet = {mix}"
        return preview.image, gr.Audio(value=audio, visible=audio is not None), line

    @boundary
    def save_merge(self, count, normalize, name, *rows, progress=PROGRESS) -> str:
        """Merge tab: save the current merge as ``runs/<name>``."""
        models, weights = self._picked(count, rows)
        info = self.studio.save_merge(
            models, weights, (name or "").strip(), normalize=bool(normalize), progress=_reporter(progress)
        )
        return f"Saved `{info.name}`; it is now in every model list."

    # ---- train -----------------------------------------------------------------------------------
    @boundary
    def train_start(self, recipe, overrides, name) -> list:
        """Train tab: start a run; returns the status outputs and an active timer."""
        self.studio.start_training(recipe or "", overrides or "", (name or "").strip() or None)
        return self.train_poll()

    def train_poll(self) -> list:
        """Train tab: status line, loss plot, latest sample, log tail, the timer (active while running), model."""
        return self._status_outputs(self.studio.training_status())

    def train_cancel(self) -> list:
        """Train tab: cancel the running run."""
        return self._status_outputs(self.studio.cancel_training())

    def _status_outputs(self, status: TrainingStatus) -> list:
        """Status line, loss plot, latest sample, log tail, timer, and the saved model's name ("" until saved).

        The name changing is what refreshes every model picker (``build_ui`` listens to it).
        """
        rows = [(r["step"], r["loss"]) for r in status.rows if "step" in r and "loss" in r]
        loss = pd.DataFrame(rows, columns=LOSS_COLUMNS)
        sample = str(status.latest_sample) if status.latest_sample else None
        summary, saved = status.summary(), ""
        if status.model is not None:
            saved = "runs/" + status.model.relative_to(self.studio.runs_dir).as_posix()
            summary += f" · model saved as `{saved}`; it is now in every model list"
        return [summary, loss, sample, status.log_tail, gr.Timer(active=status.state == "running"), saved]

    # ---- evaluate --------------------------------------------------------------------------------
    @boundary
    def evaluate(self, model, scales, per_prompt, steps, seed, progress=TQDM_PROGRESS) -> tuple:
        """Evaluate tab: table, adherence-diversity plot, report files and the Markdown table."""
        result = self.studio.evaluate(
            model,
            scales or "",
            per_prompt=whole("samples per prompt", per_prompt),
            steps=whole("steps", steps),
            seed=whole("seed", seed),
            show_progress=True,
        )
        files = [str(result.folder / name) for name in ("sweep.json", "sweep.md")]
        title = result.report.table().splitlines()[0]
        where = result.folder.relative_to(self.studio.workdir).as_posix()
        return pd.DataFrame(result.rows()), str(result.plot), files, f"{title} · samples in `{where}/`"


def scores_table(scores: dict[str, float] | None, stems: list[str]) -> pd.DataFrame:
    """The Separate tab's score table: a row per stem and the mean (empty without true stems)."""
    columns = ["stem", "SDR (v4)", "new SDR", "SI-SDR", "SI-SDRi"]
    if scores is None:
        return pd.DataFrame([], columns=columns)
    metrics = ("sdr", "new_sdr", "si_sdr", "si_sdri")
    rows = [[n, *(round(scores.get(f"{m}_{n}", math.nan), 2) for m in metrics)] for n in stems]
    rows.append(["mean", *(round(scores.get(m, math.nan), 2) for m in metrics)])
    return pd.DataFrame(rows, columns=columns)
