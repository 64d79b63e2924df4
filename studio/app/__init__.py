"""The mixstudio web app (Gradio): generate, merge, train and evaluate from a browser.

Launch it with the CLI (needs the ``app`` extra: ``pip install 'mixstudio[app]'``)::

    mixstudio serve                                   # http://127.0.0.1:7860, files under ./studio-app
    mixstudio serve --port 8080 --workdir /data/app   # another port and working folder
    mixstudio serve --host 0.0.0.0                    # listen on every interface (your network can reach it)
    mixstudio serve --share                           # also a public gradio.live link (off by default)
    mixstudio serve --model ~/models/my-shapes        # also offer a local pipeline folder (repeatable)

or from Python::

    from studio.app import Studio, build_ui, serve

    serve("studio-app", models=["runs/my-shapes"])  # what the CLI runs (uploads kept inside the workdir)
    studio = Studio("studio-app")                   # or the service alone: model cache, CPU device, runs
    studio.generate_image("shapes", "a red circle")

The app offers the embedded models that exist (``assets/models/shapes``, ``synth``), the local pipeline folders
named at launch, and every pipeline folder under ``<workdir>/runs/`` (trained, merged or imported in the app);
it writes only inside its working folder (``build_ui(studio).launch()`` works too, but then Gradio keeps
uploads in its own temp folder). Nothing loads at import time: pipelines load on first use and stay in a small cache.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_API = {"Studio": "studio.app.service", "build_ui": "studio.app.ui"}

__all__ = ["Studio", "build_ui", "serve"]


def serve(
    workdir: str | Path = "studio-app",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    models: Sequence[str | Path] = (),
    compile: bool = False,
) -> None:
    """Serve the app until interrupted (what ``mixstudio serve`` runs); ``models``: local pipeline folders to offer;
    ``compile``: compile each model's UNet on first load and warm the first image model up before serving.

    Raises:
        ValueError: when gradio is not installed, the port is out of range or taken, or a model folder is not a
            pipeline folder.
    """
    try:
        from studio.app.ui import launch
    except ModuleNotFoundError as err:
        if err.name not in ("gradio", "pandas"):
            raise
        raise ValueError("the web app needs gradio; install it with pip install 'mixstudio[app]'") from None
    launch(workdir, host, port, share, models=models, block=True, compile=compile)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'studio.app' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
