"""The mixstudio web app (Gradio): generate, merge, train and evaluate from a browser.

Launch it with the CLI (needs the ``app`` extra: ``pip install 'mixstudio[app]'``)::

    mixstudio serve                                   # http://127.0.0.1:7860, files under ./studio-app
    mixstudio serve --port 8080 --workdir /data/app   # another port and working folder
    mixstudio serve --host 0.0.0.0                    # listen on every interface (your network can reach it)
    mixstudio serve --share                           # also a public gradio.live link (off by default)

or from Python::

    from studio.app import Studio, build_ui

    studio = Studio("studio-app")          # the service: model cache, CPU device, training runs
    build_ui(studio).launch()              # or studio.generate_image("shapes", "a red circle") directly

The app offers the embedded models that exist (``assets/models/shapes``, ``synth``) and every pipeline
folder under ``<workdir>/runs/`` (trained, merged or imported in the app); it writes only inside its
working folder. Nothing loads at import time: pipelines load on first use and stay in a small cache.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_API = {"Studio": "studio.app.service", "build_ui": "studio.app.ui"}

__all__ = ["Studio", "build_ui", "serve"]


def serve(workdir: str | Path = "studio-app", host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the app until interrupted (what ``mixstudio serve`` runs).

    Raises:
        ValueError: when gradio is not installed, or the port is out of range or taken.
    """
    try:
        from studio.app.ui import launch
    except ModuleNotFoundError as err:
        if err.name not in ("gradio", "pandas"):
            raise
        raise ValueError("the web app needs gradio; install it with pip install 'mixstudio[app]'") from None
    launch(workdir, host, port, share, block=True)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'studio.app' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
