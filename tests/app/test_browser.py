"""End to end in a real browser: generate, move a merge slider, see an error toast, and generate again; a
finished training run shows up in the model pickers without a reload; personalise with an uploaded subject
picture and see the router maps; separate an uploaded song.

Runs in the default suite; skips (saying why) without the Debian ``chromium`` package or the ``playwright``
Python package. The server runs in this process on a free port with tiny random models in its workdir.
"""

import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # the one .ci/run checks for, then Debian's
if not CHROMIUM.is_file():
    pytest.skip("browser test needs Chromium on PATH (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test needs playwright (pip install playwright)")

from studio.app.ui import launch  # noqa: E402
from tests.app.test_moa_app import make_moa  # noqa: E402
from tests.app.test_separate_tab import tiny_separator  # noqa: E402

TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_store):
    root = tmp_path_factory.mktemp("browser")
    (root / "assets").mkdir()
    (root / "assets" / "judges").symlink_to(Path(__file__).resolve().parents[2] / "assets" / "judges")
    workdir = root / "app"
    for name in ("a", "b"):
        (workdir / "runs").mkdir(parents=True, exist_ok=True)
        (workdir / "runs" / name).symlink_to(model_store / name, target_is_directory=True)
    tiny_separator(workdir / "runs" / "sep" / "model")
    make_moa(workdir, "a", "moa-a")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIXSTUDIO_ASSETS", str(root / "assets"))  # only the tiny models are listed
        patch.setenv("GRADIO_TEMP_DIR", str(workdir / ".gradio"))  # launch sets it; restored afterwards
        port = free_port()
        demo, studio = launch(workdir, port=port, block=False)
        try:
            yield f"http://127.0.0.1:{port}/", workdir, studio
        finally:
            demo.close()
            studio.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server[0])
        yield page
        browser.close()


def set_slider_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in dropdown ``elem_id``, again if the page's first refresh (which rebuilds the pickers
    with the values they had when the page loaded) lands after the choice."""
    for _ in range(10):
        page.locator(f"#{elem_id} input").click()
        page.get_by_role("option").filter(has_text=option).first.click()
        page.wait_for_timeout(1000)
        if option in page.locator(f"#{elem_id} input").input_value():
            return
    raise AssertionError(f"dropdown {elem_id} did not keep {option!r}")


def generate_and_wait(page, previous: str = "") -> str:
    """Click generate and wait for a finished status line naming a new output folder."""
    page.click("#image-generate")
    page.wait_for_function(
        "previous => { const text = (document.querySelector('#image-status') || {}).innerText || '';"
        " const t = text.trim(); return /^[0-9]+ image[(]s[)] in [^ ]+$/.test(t) && t !== previous; }",
        arg=previous,
    )
    page.locator("#image-gallery img").first.wait_for()
    return page.inner_text("#image-status").strip()


def test_generate_merge_error_and_recover_in_a_browser(server, page):
    start = time.monotonic()
    _, workdir, _ = server
    # 1. type a prompt, generate, see the images
    page.fill("#image-prompt textarea", "a green square")
    set_slider_number(page, "image-steps", 2)
    first = generate_and_wait(page)
    assert page.locator("#image-gallery img").count() >= 1
    assert len(list((workdir / "outputs" / "image").glob("*/0000.png"))) == 1

    # 2. merge tab: preview, move weight 1, and the preview changes
    page.get_by_role("tab", name="Merge").click()
    set_slider_number(page, "merge-steps", 2)
    page.click("#merge-preview-button")
    page.locator("#merge-preview img").wait_for()
    page.wait_for_function("() => document.querySelector('#merge-mix').innerText.includes('UNet = 0.5')")
    src = page.get_attribute("#merge-preview img", "src")
    pixels = page.locator("#merge-preview img").screenshot()
    slider = page.locator("#merge-weight-0 input[type=range]").bounding_box()
    y = slider["y"] + slider["height"] / 2
    page.mouse.move(slider["x"] + slider["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(slider["x"] + slider["width"] * 0.95, y, steps=5)
    page.mouse.up()  # the slider's release event re-merges and samples
    page.wait_for_function(
        "src => { const img = document.querySelector('#merge-preview img'); return img && img.src !== src; }", arg=src
    )
    assert "UNet = 0.5" not in page.inner_text("#merge-mix")
    time.sleep(0.5)  # let the new image paint before comparing pixels
    assert page.locator("#merge-preview img").screenshot() != pixels

    # 3. an empty prompt shows an error toast, and the app still answers afterwards
    page.get_by_role("tab", name="Image").click()
    page.fill("#image-prompt textarea", "")
    page.click("#image-generate")
    toast = page.locator(".toast-body.error", has_text="prompt is empty")
    toast.wait_for()
    page.fill("#image-prompt textarea", "a blue circle")
    second = generate_and_wait(page, previous=first)
    assert second != first and len(list((workdir / "outputs" / "image").glob("*/0000.png"))) == 2
    assert time.monotonic() - start < 60


def test_a_finished_training_run_appears_in_the_pickers_without_a_reload(server, page, fake_trainer):
    _, workdir, studio = server
    studio.train_command = fake_trainer(steps=3, delay=0.05)  # a stand-in trainer that exports model "a"
    page.get_by_role("tab", name="Train").click()
    page.fill("#train-name textarea, #train-name input", "browser-run")
    page.click("#train-start")
    page.locator("#train-status", has_text="finished").wait_for()
    assert (workdir / "runs" / "browser-run" / "model" / "model_index.json").is_file()
    page.get_by_role("tab", name="Image").click()
    page.locator("#image-model input").click()
    page.get_by_role("option").filter(has_text="runs/browser-run/model").first.wait_for()
    page.keyboard.press("Escape")


def test_upload_a_file_separate_it_and_hear_three_stems(server, page, tmp_path):
    import numpy as np
    import soundfile as sf

    _, workdir, _ = server
    song = tmp_path / "song.wav"
    t = np.arange(16_000) / 16_000
    sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)
    page.get_by_role("tab", name="Separate").click()
    page.locator("#separate-upload input[type=file]").set_input_files(str(song))
    page.click("#separate-run")
    page.locator("#separate-status", has_text="3 stems").wait_for()
    for i in range(3):
        page.locator(f"#separate-stem-{i}").wait_for(state="visible")
    assert not page.locator("#separate-stem-3").is_visible()
    assert len(list((workdir / "separations").glob("*/*.wav"))) == 4  # input.wav and three stems
    page.screenshot(path=str(tmp_path / "separate.png"), full_page=True)


def test_personalise_with_an_uploaded_subject_and_see_router_maps(server, page, tmp_path):
    from PIL import Image

    from tests.app.test_moa_app import subject_picture

    _, workdir, _ = server
    picture = tmp_path / "subject.png"
    Image.fromarray(subject_picture()).save(picture)
    page.get_by_role("tab", name="Image").click()
    page.get_by_text("Personalise (mixture of attention)").click()
    pick(page, "image-moa", "runs/moa-a")
    page.locator("#image-subject input[type=file]").set_input_files(str(picture))
    page.locator("#image-subject img").wait_for()
    page.fill("#image-prompt textarea", "a sks shape on a navy background")
    set_slider_number(page, "image-steps", 2)
    page.click("#image-generate")
    page.locator("#image-status", has_text="router maps in router/").wait_for()
    folders = [f for f in (workdir / "outputs" / "image").glob("*") if (f / "router_grid.png").is_file()]
    assert len(folders) == 1 and len(list((folders[0] / "router").glob("*.png"))) == 4
    page.locator("#image-gallery img").first.wait_for()
    page.screenshot(path=str(tmp_path / "personalise.png"), full_page=True)
