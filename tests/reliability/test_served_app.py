"""The served app under eight users at once: every request answered, on loopback, within a bounded time."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

from studio.app.ui import launch  # noqa: E402

USERS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_eight_users_at_once_are_all_served(workdir, no_embedded, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(workdir / ".gradio"))
    port = free_port()
    demo, studio = launch(workdir, port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert demo.server_name == "127.0.0.1"  # loopback unless the operator asks otherwise

        def user(k: int) -> tuple[float, str]:
            client = gradio_client.Client(url, verbose=False)
            start = time.perf_counter()
            inputs = ["runs/a", f"a red circle {k}", "", 2, 2.0, k, 1, "saved", "", 1.0, 0.0, 1.0]
            _, _, status = client.predict(*inputs, api_name="/generate_image")
            return time.perf_counter() - start, status

        start = time.perf_counter()
        with ThreadPoolExecutor(USERS) as pool:
            results = list(pool.map(user, range(USERS)))
        wall = time.perf_counter() - start
        print(f"{USERS} users served in {wall:.1f} s; per request {[round(s, 1) for s, _ in results]}")
        assert all("1 image(s)" in status for _, status in results)
        assert wall < 180
        folders = list((Path(workdir) / "outputs" / "image").iterdir())
        assert len(folders) == USERS and len({f.name for f in folders}) == USERS  # no two users share a folder
    finally:
        demo.close()
        studio.close()
