"""The models the app offers (embedded ones that are present, local pipeline folders its operator named with
``mixstudio serve --model PATH``, pipeline folders under its ``runs/``) and the adapter files found there.

Only listed models and adapters ever load (the browser sends a name, never a path), and loaded pipelines are kept
in a small least-recently-used cache keyed by source, sampler and save time, so a re-saved folder is
reloaded rather than served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import studio
from studio.app.inputs import Modality
from studio.attention import set_backend


@dataclass
class ModelInfo:
    """A model the app can use: ``name`` as shown in pickers, ``source`` as ``load_pipeline`` takes it."""

    name: str
    modality: Modality
    source: str
    kind: Literal["embedded", "local", "run"]

    @property
    def index(self) -> Path:
        """The model's ``model_index.json``."""
        folder = studio.model_dir(self.source) if self.kind == "embedded" else Path(self.source)
        return folder / "model_index.json"


@dataclass
class AdapterInfo:
    """An adapter file under ``runs/``: ``name`` as shown in pickers, the ``base`` model it applies to."""

    name: str
    path: Path
    method: str
    base: str
    modality: Modality


@dataclass
class MoAInfo:
    """A mixture-of-attention run under ``runs/`` (its ``moa.safetensors``): ``name`` as shown in pickers, the listed
    ``base`` model it was trained on, ``mode`` (``encoder``: takes a reference image; ``subject``: has its own)."""

    name: str
    path: Path
    mode: str
    base: str


class ModelCatalog:
    """Lists, resolves and loads (with an LRU cache) the models of an app.

    Args:
        runs_dir: folder scanned for pipeline folders (``runs/*/`` and ``runs/*/*/`` with a ``model_index.json``).
        device: where loaded pipelines live.
        cache_size: loaded pipelines kept (least recently used evicted first).
        local: pipeline folders outside ``runs_dir`` to offer too, each listed under its path as given.
        compile: compile each pipeline's UNet when it is loaded (``studio.compile_pipeline``).

    Raises:
        ValueError: for a cache size below 1, or a local folder that is not a studio pipeline folder.
    """

    def __init__(
        self,
        runs_dir: Path,
        device: torch.device,
        cache_size: int = 3,
        local: Sequence[Path] = (),
        compile: bool = False,
    ):
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.runs_dir, self.device, self.cache_size = Path(runs_dir), device, cache_size
        self.compile = compile
        self.attention: str | None = None
        self.local = [_local_model(Path(folder)) for folder in local]
        self._cache: OrderedDict[tuple, studio.StudioDiffusionPipeline] = OrderedDict()
        self._lock = threading.RLock()

    def list(self, modality: Modality | None = None) -> list[ModelInfo]:
        """Embedded models that are present, then the pipeline folders under ``runs_dir``, by name."""
        found = []
        for name, embedded in studio.EMBEDDED.items():
            try:
                studio.model_dir(name)
            except ValueError:
                continue
            found.append(ModelInfo(name=name, modality=embedded.modality, source=name, kind="embedded"))
        found += self.local
        if self.runs_dir.is_dir():
            indexes = [*self.runs_dir.glob("*/model_index.json"), *self.runs_dir.glob("*/*/model_index.json")]
            for index in sorted(indexes):
                try:
                    kind = studio.model_modality(index.parent)
                except ValueError:  # a broken folder is left out, not fatal to the listing
                    continue
                name = "runs/" + index.parent.relative_to(self.runs_dir).as_posix()
                found.append(ModelInfo(name=name, modality=kind, source=str(index.parent), kind="run"))
        return [m for m in found if modality is None or m.modality == modality]

    def list_adapters(self, base: str | None = None) -> list[AdapterInfo]:
        """Adapter files (``save_adapter``'s, e.g. ``runs/<run>/adapter.safetensors``) whose base model is listed.

        Files without a studio adapter header, text-encoder adapters and adapters of a base model the app does
        not list are left out (they could not be applied here).

        Args:
            base: only the adapters of this listed model.
        """
        from studio.adapters import read_adapter_header

        if not self.runs_dir.is_dir():
            return []
        models = self.list()
        found = []
        files = [*self.runs_dir.glob("*/*.safetensors"), *self.runs_dir.glob("*/*/*.safetensors")]
        for path in sorted(files):
            if path.name.endswith(".text_encoder.safetensors"):
                continue
            try:
                header = read_adapter_header(path)
            except ValueError:  # model weights and foreign files have no adapter header
                continue
            model = _model_named(models, header.get("base_model_id"))
            if model is None or (base is not None and model.name != base):
                continue
            name = "runs/" + path.relative_to(self.runs_dir).as_posix()
            found.append(AdapterInfo(name, path, header["method"], model.name, model.modality))
        return found

    def list_moa(self, base: str | None = None) -> list[MoAInfo]:
        """Mixture-of-attention runs (``runs/*/moa.safetensors``, ``runs/*/*/moa.safetensors``) of listed models.

        Args:
            base: only the runs trained on this listed model.
        """
        from studio.attention.moa import FILE, read_moa_settings

        if not self.runs_dir.is_dir():
            return []
        models, found = self.list("image"), []
        for path in sorted([*self.runs_dir.glob(f"*/{FILE}"), *self.runs_dir.glob(f"*/*/{FILE}")]):
            try:
                settings = read_moa_settings(path)
            except ValueError:
                continue
            model = _model_named(models, settings.base)
            if model is None or (base is not None and model.name != base):
                continue
            found.append(MoAInfo("runs/" + path.parent.relative_to(self.runs_dir).as_posix(), path, settings.mode,
                                 model.name))  # fmt: skip
        return found

    def resolve_moa(self, name: str, model: str) -> MoAInfo:
        """The listed MoA run called ``name``, trained on the listed model ``model``.

        Raises:
            ValueError: for an unknown run or one of another base model.
        """
        runs = self.list_moa()
        info = next((m for m in runs if m.name == name), None)
        if info is None:
            raise ValueError(f"unknown MoA run {name!r}; pick one of {[m.name for m in runs]} (refresh the lists)")
        if info.base != model:
            raise ValueError(f"MoA run {name!r} was trained on {info.base!r}, not {model!r}; pick that model")
        return info

    def resolve_adapter(self, adapter: str) -> AdapterInfo:
        """The listed adapter called ``adapter``.

        Raises:
            ValueError: for an unknown name (the message lists the known ones).
        """
        adapters = self.list_adapters()
        info = next((a for a in adapters if a.name == adapter), None)
        if info is None:
            names = [a.name for a in adapters]
            raise ValueError(f"unknown adapter {adapter!r}; pick one of {names} (refresh the lists after training)")
        return info

    def resolve(self, model: str, modality: Modality | None = None) -> ModelInfo:
        """The listed model called ``model``.

        Raises:
            ValueError: for an empty or unknown name, or a model of the other modality.
        """
        if not model:
            raise ValueError("no model picked; choose one in the model list (train, merge or import one if empty)")
        models = self.list()
        info = next((m for m in models if m.name == model), None)
        if info is None:
            names = [m.name for m in models]
            raise ValueError(f"unknown model {model!r}; pick one of {names} (refresh the list after training)")
        if modality is not None and info.modality != modality:
            raise ValueError(f"model {model!r} is an {info.modality} model; pick an {modality} model")
        return info

    def version(self, info: ModelInfo) -> int:
        """Save time of a model (its ``model_index.json``), part of every cache key."""
        return info.index.stat().st_mtime_ns

    def set_attention(self, name: str | None) -> int:
        """Send every loaded and every later-loaded pipeline's attention through backend ``name``.

        Returns:
            The attention layers switched in the loaded pipelines.

        Raises:
            ValueError: for an unknown backend name.
        """
        with self._lock:
            switched = sum(set_backend(pipe, name) for pipe in self._cache.values()) if name else 0
            self.attention = name
            return switched

    def pipeline(self, model: str, scheduler: str | None = None) -> studio.StudioDiffusionPipeline:
        """The loaded pipeline of a listed model, from the cache when possible.

        Raises:
            ValueError: for an unknown model or scheduler, or a folder that does not load.
        """
        info = self.resolve(model)
        if scheduler is not None and scheduler not in studio.SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} is unknown; use one of {sorted(studio.SCHEDULERS)}")
        key = (info.source, scheduler, self.version(info))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pipe = studio.load_pipeline(info.source, info.modality, scheduler=scheduler).to(self.device)
            if self.attention is not None:
                set_backend(pipe, self.attention)
            if self.compile:
                studio.compile_pipeline(pipe)
            self._cache[key] = pipe
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return pipe

    def clear(self) -> None:
        """Drop every loaded pipeline."""
        with self._lock:
            self._cache.clear()


def _model_named(models: list[ModelInfo], base_model_id: str | None) -> ModelInfo | None:
    """The listed model an adapter header's base id means: an embedded name or a pipeline folder's path."""
    if not base_model_id:
        return None
    for model in models:
        if base_model_id in (model.name, model.source):
            return model
        if model.kind != "embedded" and Path(base_model_id).absolute() == Path(model.source).absolute():
            return model
    return None


def _local_model(folder: Path) -> ModelInfo:
    """A local pipeline folder as a listed model (its name: the path as given).

    Raises:
        ValueError: for a missing folder or one without a studio pipeline's ``model_index.json``.
    """
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"model folder {str(folder)!r} has no model_index.json; pass a saved pipeline folder")
    return ModelInfo(
        name=str(folder), modality=studio.model_modality(folder), source=str(folder.absolute()), kind="local"
    )
