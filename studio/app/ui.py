"""The Gradio layout: ``build_ui(studio)`` returns the Blocks that ``mixstudio serve`` launches.

Tabs: Image, Music, Merge, Train, Evaluate, Models. Every long action goes through one queue slot
(``concurrency_id="compute"``: the CPU runs one sampler at a time) and reports progress; polling,
cancelling and list refreshes bypass that slot so they answer while a job runs.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

import studio
from studio import check_work_dir
from studio.app.handlers import LOSS_COLUMNS, PROGRESS, Handlers
from studio.app.inputs import (
    MAX_ADAPTER_SCALE,
    MAX_APP_STEPS,
    MAX_CLIPS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_MERGE,
    MAX_PER_PROMPT,
)
from studio.app.separate_tab import separate_tab
from studio.app.service import Studio
from studio.app.uploads import MAX_UPLOAD_BYTES

logger = logging.getLogger(__name__)

#: Small models make small pictures: scale them up without blurring.
CSS = """
.pixelated img { image-rendering: pixelated; }
#merge-preview img { width: 100%; height: 100%; object-fit: contain; }
"""
HEAVY = {"concurrency_id": "compute", "concurrency_limit": 1}
LIGHT = {"concurrency_limit": None, "show_progress": "hidden"}
DEFAULT_PROMPT = "a red circle on a navy background"
DEFAULT_MUSIC_PROMPT = "a fast minor tune with a bell melody and rock drums"


def build_ui(studio: Studio) -> gr.Blocks:
    """The app's Blocks with every event wired to ``studio`` (nothing is loaded until an event runs).

    Args:
        studio: the service object every handler calls.

    Returns:
        The ``gr.Blocks`` (queue configured: one compute job at a time, at most 16 waiting).
    """
    h = Handlers(studio)
    with gr.Blocks(title="mixstudio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# mixstudio\nGenerate, merge, train and evaluate text-to-image and text-to-music models.")
        _settings(h, studio)
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                image_model, image_adapter, image_moa = _image_tab(h)
            with gr.Tab("Music", id="music"):
                music_model, music_adapter = _music_tab(h)
            with gr.Tab("Merge", id="merge"):
                merge_models, saved = _merge_tab(h)
            with gr.Tab("Train", id="train"):
                trained = _train_tab(h, studio)
            with gr.Tab("Separate", id="separate"):
                separator, clip = separate_tab(h, HEAVY, LIGHT)
            with gr.Tab("Evaluate", id="evaluate"):
                eval_model = _evaluate_tab(h)
            with gr.Tab("Models", id="models"):
                table, refresh, imported = _models_tab(h)
        pickers = [(image_model, "image"), (music_model, "audio"), *((m, "merge") for m in merge_models)]
        pickers.append((eval_model, None))
        # pickers that follow a model: (picker, its model picker, what rebuilds it)
        adapter_pickers = [
            (image_adapter, image_model, h.adapter_dropdown),
            (music_adapter, music_model, h.adapter_dropdown),
        ]
        adapter_pickers.append((image_moa, image_model, h.moa_dropdown))

        def refresh_all(*current):
            picked, adapters = current[: len(pickers)], current[len(pickers) :]
            models = [h.dropdown(value, kind) for value, (_, kind) in zip(picked, pickers, strict=True)]
            shown = {id(d): h.kept(value, kind) for value, (d, kind) in zip(picked, pickers, strict=True)}
            for value, (_, model, rebuild) in zip(adapters, adapter_pickers, strict=True):
                models.append(rebuild(shown[id(model)], value))
            return [*models, h.models_table()]

        dropdowns = [d for d, _ in pickers] + [a for a, _, _ in adapter_pickers]
        refresh.click(refresh_all, dropdowns, [*dropdowns, table], **LIGHT)
        demo.load(refresh_all, dropdowns, [*dropdowns, table], **LIGHT)
        for event in (saved, imported):  # a new model appears in every picker
            event.success(refresh_all, dropdowns, [*dropdowns, table], **LIGHT)
        trained.change(refresh_all, dropdowns, [*dropdowns, table], **LIGHT)  # so does a finished run's
        for event in (refresh.click, demo.load):  # and the Separate tab's lists
            event(h.separator_choices, None, separator, **LIGHT)
            event(h.clip_choices, clip, clip, **LIGHT)
    demo.queue(default_concurrency_limit=1, max_size=16)
    return demo


def _settings(h: Handlers, studio: Studio) -> None:
    """The Settings accordion: the attention backend every model samples with."""
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            backend = gr.Dropdown(
                choices=studio.attention_backends(),
                value="sdpa",
                label="attention backend",
                elem_id="attention-backend",
            )
            status = gr.Markdown("attention backend: the models' own processors (sdpa)")
        backend.change(h.set_attention, backend, status, **HEAVY)


def _model_picker(h: Handlers, modality: str | None, label: str = "model", elem_id: str | None = None) -> gr.Dropdown:
    choices = h.choices(modality)
    value = choices[0][1] if choices else None
    return gr.Dropdown(choices=choices, value=value, label=label, elem_id=elem_id)


def _sampling_controls(prefix: str, steps: int = 25) -> tuple:
    with gr.Row():
        steps_box = gr.Slider(1, MAX_APP_STEPS, value=steps, step=1, label="steps", elem_id=f"{prefix}-steps")
        guidance = gr.Slider(
            0, MAX_GUIDANCE, value=studio.default_guidance(prefix), step=0.5, label="guidance (1 = none)"
        )
        seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}-seed")
    return steps_box, guidance, seed


def _scheduler_picker() -> gr.Dropdown:
    return gr.Dropdown(["saved", *Studio.samplers()], value="saved", label="sampler")


def _guidance_refinements(prefix: str) -> tuple[gr.Slider, gr.Slider]:
    """Guidance rescale ``φ`` and the top of the guided noise levels (the interval's low end is 0)."""
    with gr.Row():
        rescale = gr.Slider(
            0, 1, value=0, step=0.05, elem_id=f"{prefix}-guidance-rescale",
            label="guidance rescale (0 = off; tames high guidance)",
        )  # fmt: skip
        guided_below = gr.Slider(
            0.05, 1, value=1, step=0.05, elem_id=f"{prefix}-guided-below",
            label="guide only at noise levels t/T up to (1 = every step; lower is faster)",
        )  # fmt: skip
    return rescale, guided_below


def _adapter_controls(h: Handlers, model: gr.Dropdown, prefix: str) -> tuple[gr.Dropdown, gr.Slider]:
    """An adapter picker that follows ``model`` and its strength slider."""
    with gr.Row():
        adapter = gr.Dropdown(
            h.adapter_choices(model.value), value="", label="adapter (from runs/)", elem_id=f"{prefix}-adapter"
        )
        strength = gr.Slider(
            -MAX_ADAPTER_SCALE, MAX_ADAPTER_SCALE, value=1.0, step=0.05, elem_id=f"{prefix}-adapter-strength",
            label="adapter strength (orthogonal adapters stay rotations at any strength)",
        )  # fmt: skip
    model.change(h.adapter_dropdown, [model, adapter], adapter, **LIGHT)
    return adapter, strength


def _moa_controls(h: Handlers, model: gr.Dropdown) -> tuple[gr.Dropdown, gr.Image, gr.Slider, gr.Checkbox]:
    """The personalisation accordion: a mixture-of-attention run of ``model``, the subject's picture, the
    personalised branch's strength and whether to show where its router sent the subject."""
    with gr.Accordion("Personalise (mixture of attention)", open=False):
        gr.Markdown(
            "Mark the subject in the prompt with `sks` before its class word (*a sks shape on a navy background*); "
            "the rest of the prompt and the layout stay the base model's."
        )
        with gr.Row():
            moa = gr.Dropdown(h.moa_choices(model.value), value="", label="MoA run (from runs/)", elem_id="image-moa")
            strength = gr.Slider(
                0, 3, value=1.0, step=0.05, elem_id="image-moa-strength",
                label="personalisation strength (0 = the base model)",
            )  # fmt: skip
        with gr.Row():
            subject = gr.Image(
                label="subject picture (for runs that read one; cropped to a square)", type="numpy",
                image_mode="RGB", sources=["upload", "clipboard"], height=160, elem_id="image-subject",
            )  # fmt: skip
            router = gr.Checkbox(value=True, label="show router maps", elem_id="image-router")
    model.change(h.moa_dropdown, [model, moa], moa, **LIGHT)
    return moa, subject, strength, router


def _image_tab(h: Handlers) -> tuple[gr.Dropdown, gr.Dropdown, gr.Dropdown]:
    with gr.Row():
        with gr.Column():
            model = _model_picker(h, "image", elem_id="image-model")
            adapter, strength = _adapter_controls(h, model, "image")
            moa, subject, moa_strength, router = _moa_controls(h, model)
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="prompt", lines=2, elem_id="image-prompt")
            negative = gr.Textbox(label="negative prompt", placeholder="optional")
            steps, guidance, seed = _sampling_controls("image")
            with gr.Row():
                count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images")
                scheduler = _scheduler_picker()
            rescale, guided_below = _guidance_refinements("image")
            button = gr.Button("Generate", variant="primary", elem_id="image-generate")
        with gr.Column():
            gallery = gr.Gallery(label="images", columns=4, elem_id="image-gallery", elem_classes=["pixelated"])
            status = gr.Markdown(elem_id="image-status")
            manifest = gr.File(label="manifest.json")
    inputs = [model, prompt, negative, steps, guidance, seed, count, scheduler, adapter, strength]
    inputs += [rescale, guided_below, moa, subject, moa_strength, router]
    button.click(h.generate_image, inputs, [gallery, manifest, status], **HEAVY)
    prompt.submit(h.generate_image, inputs, [gallery, manifest, status], **HEAVY)
    return model, adapter, moa


def _music_tab(h: Handlers) -> tuple[gr.Dropdown, gr.Dropdown]:
    with gr.Row():
        with gr.Column():
            model = _model_picker(h, "audio", elem_id="music-model")
            adapter, strength = _adapter_controls(h, model, "music")
            prompt = gr.Textbox(value=DEFAULT_MUSIC_PROMPT, label="prompt", lines=2, elem_id="music-prompt")
            negative = gr.Textbox(label="negative prompt", placeholder="optional")
            steps, guidance, seed = _sampling_controls("music")
            with gr.Row():
                count = gr.Slider(1, MAX_CLIPS, value=2, step=1, label="clips")
                length = gr.Number(value=0, label="length in s (0 = the model's)")
                scheduler = _scheduler_picker()
            rescale, guided_below = _guidance_refinements("music")
            button = gr.Button("Generate", variant="primary", elem_id="music-generate")
        with gr.Column():
            audios, spectrograms = [], []
            for i in range(MAX_CLIPS):
                with gr.Row():
                    audios.append(gr.Audio(label=f"clip {i + 1}", type="filepath", visible=False))
                    spectrograms.append(gr.Image(label="spectrogram", visible=False, height=120))
            status = gr.Markdown(elem_id="music-status")
            manifest = gr.File(label="manifest.json")
    inputs = [model, prompt, negative, steps, guidance, seed, count, length, scheduler, adapter, strength]
    inputs += [rescale, guided_below]
    button.click(h.generate_music, inputs, [*audios, *spectrograms, manifest, status], **HEAVY)
    return model, adapter


def _merge_tab(h: Handlers) -> tuple[list[gr.Dropdown], gr.events.Dependency]:
    gr.Markdown(
        "Weight-space merge of 2 to 4 models of one architecture: the UNet becomes Σ wᵢ·UNetᵢ. "
        "Or pick 2 to 4 adapters of one model (one method or several): each applies at its weight as strength "
        "(additive adapters sum exactly; orthogonal ones compose and stay rotations, also for weights below 0 or "
        "above 1). "
        "Releasing a slider re-merges in memory and samples the fixed prompt and seed."
    )
    choices = h.choices("merge")
    defaults = [value for _, value in h.choices("image")][:2]  # a mergeable pair: one modality, one family
    pairs = h.studio.quality_diversity_pairs()
    with gr.Row():
        with gr.Column():
            with gr.Group(visible=bool(pairs)):
                gr.Markdown(
                    "**Quality ↔ diversity.** The two CFG-distilled students of a world (trained with and without "
                    "a diversity reward) merged as (1 − λ)·quality + λ·diversity, sampled without guidance."
                )
                with gr.Row():
                    world = gr.Dropdown(list(pairs), value=next(iter(pairs), None), label="world", elem_id="qd-world")
                    diversity = gr.Slider(
                        0, 1, value=0.0, step=0.05, label="λ: quality → diversity", elem_id="qd-lambda"
                    )
            count = gr.Radio(list(range(2, MAX_MERGE + 1)), value=2, label="number of models or adapters")
            rows, models, weights = [], [], []
            for i in range(MAX_MERGE):
                with gr.Row(visible=i < 2) as row:
                    value = defaults[i] if i < len(defaults) else None
                    models.append(gr.Dropdown(choices=choices, value=value, label=f"model {i + 1}"))
                    weights.append(
                        gr.Slider(-1, 2, value=0.5, step=0.05, label=f"weight {i + 1}", elem_id=f"merge-weight-{i}")
                    )
                rows.append(row)
            normalize = gr.Checkbox(value=True, label="normalise weights to sum 1")
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="preview prompt", elem_id="merge-prompt")
            steps, guidance, seed = _sampling_controls("merge", steps=20)
            preview_button = gr.Button("Preview", elem_id="merge-preview-button")
        with gr.Column():
            image = gr.Image(label="preview", height=320, elem_id="merge-preview", elem_classes=["pixelated"])
            audio = gr.Audio(label="preview clip", visible=False)
            mix = gr.Markdown(elem_id="merge-mix")
            name = gr.Textbox(label="save as runs/<name>", placeholder="e.g. shapes-mix-03")
            save = gr.Button("Save merge", elem_id="merge-save")
            saved = gr.Markdown()
    count.change(h.merge_rows, count, rows, **LIGHT)
    inputs = [count, prompt, seed, steps, guidance, normalize, *models, *weights]
    preview = _tracked(h.merge_preview, len(inputs))
    for slider in weights:
        slider.release(preview, inputs, [image, audio, mix], **HEAVY)
    preview_button.click(preview, inputs, [image, audio, mix], **HEAVY)
    diversity.release(
        h.quality_diversity_preview, [world, diversity, prompt, seed, steps], [image, audio, mix], **HEAVY
    )

    def world_prompt(name: str) -> str:
        return DEFAULT_MUSIC_PROMPT if studio.EMBEDDED[pairs[name][0]].modality == "audio" else DEFAULT_PROMPT

    world.change(world_prompt, world, prompt, **LIGHT)
    save_inputs = [count, normalize, name, *models, *weights]
    event = save.click(_tracked(h.save_merge, len(save_inputs)), save_inputs, saved, **HEAVY)
    return models, event


def _tracked(handler: Callable, inputs: int) -> Callable:
    """``handler`` (``*values, progress=``) with a fixed signature of ``inputs`` values and then the tracker.

    Gradio hands a progress tracker only to a ``gr.Progress`` default among the positional parameters, and the
    merge handlers take their model rows as ``*rows``.
    """

    def call(*args):
        *values, progress = args
        return handler(*values, progress=progress)

    positional = inspect.Parameter.POSITIONAL_ONLY
    params = [inspect.Parameter(f"value_{i}", positional) for i in range(inputs)]
    call.__signature__ = inspect.Signature([*params, inspect.Parameter("progress", positional, default=PROGRESS)])
    call.__name__ = handler.__name__
    return call


def _train_tab(h: Handlers, studio: Studio) -> gr.State:
    """The Train tab; returns the state holding the finished run's model name (it changes once saved)."""
    recipes = studio.recipes()
    with gr.Row():
        with gr.Column():
            recipe = gr.Dropdown(
                [(f"{name}: {doc}", name) for name, doc in recipes.items()],
                value="pretrain-shapes" if "pretrain-shapes" in recipes else next(iter(recipes)),
                label="recipe",
                elem_id="train-recipe",
            )
            overrides = gr.Textbox(
                label="overrides, one key=value per line",
                lines=4,
                placeholder="max_steps=200\nbatch_size=16",
                elem_id="train-overrides",
            )
            name = gr.Textbox(label="run name (default: recipe and time)", elem_id="train-name")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            status = gr.Markdown("No training run yet.", elem_id="train-status")
            log = gr.Textbox(label="log", lines=8, max_lines=8, autoscroll=True)
        with gr.Column():
            loss = gr.LinePlot(x="step", y="loss", title="training loss", value=_empty_loss(), height=260)
            sample = gr.Image(label="latest samples", elem_classes=["pixelated"])
    timer = gr.Timer(2.0, active=False)
    trained = gr.State("")
    outputs = [status, loss, sample, log, timer, trained]
    start.click(h.train_start, [recipe, overrides, name], outputs, concurrency_id="train-start", concurrency_limit=1)
    cancel.click(h.train_cancel, None, outputs, **LIGHT)
    timer.tick(h.train_poll, None, outputs, **LIGHT)
    return trained


def _empty_loss():
    import pandas as pd

    return pd.DataFrame({c: [] for c in LOSS_COLUMNS})


def _evaluate_tab(h: Handlers) -> gr.Dropdown:
    gr.Markdown(
        "Guidance sweep on the world's held-out prompts, scored by the eval judge: adherence against "
        "diversity for each guidance scale (like `mixstudio sweep`)."
    )
    with gr.Row():
        with gr.Column():
            model = _model_picker(h, None, elem_id="eval-model")
            scales = gr.Textbox(value="1, 2, 4", label="guidance scales", elem_id="eval-scales")
            per_prompt = gr.Slider(2, MAX_PER_PROMPT, value=2, step=1, label="samples per prompt")
            steps = gr.Slider(1, MAX_APP_STEPS, value=25, step=1, label="steps", elem_id="eval-steps")
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
            button = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
        with gr.Column():
            table = gr.Dataframe(label="per guidance scale", interactive=False, elem_id="eval-table")
            plot = gr.Image(label="adherence vs diversity", elem_id="eval-plot")
            files = gr.File(label="sweep.json, sweep.md", file_count="multiple")
            markdown = gr.Markdown()
    button.click(h.evaluate, [model, scales, per_prompt, steps, seed], [table, plot, files, markdown], **HEAVY)
    return model


def _models_tab(h: Handlers) -> tuple[gr.Dataframe, gr.Button, gr.events.Dependency]:
    table = gr.Dataframe(value=h.models_table(), label="models", interactive=False, elem_id="models-table")
    refresh = gr.Button("Refresh model lists", elem_id="models-refresh")
    limit = MAX_UPLOAD_BYTES >> 20
    gr.Markdown(f"Import a pipeline folder as a .zip (safetensors and JSON files only, at most {limit} MB).")
    with gr.Row():
        upload = gr.File(label="pipeline .zip", file_types=[".zip"], type="filepath")
        name = gr.Textbox(label="name under runs/")
    button = gr.Button("Import")
    result = gr.Markdown()
    event = button.click(h.import_model, [upload, name], result, **HEAVY)
    return table, refresh, event


def launch(
    workdir: str | Path = "studio-app",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    *,
    models: Sequence[str | Path] = (),
    block: bool = True,
    compile: bool = False,
) -> tuple[gr.Blocks, Studio]:
    """Build the service and the UI and serve them.

    Args:
        workdir: the app's working folder (every file it writes, Gradio's cache included, lands inside).
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port.
        share: also open a public gradio.live tunnel.
        models: local pipeline folders to offer in the pickers besides the embedded models and ``runs/``.
        block: serve until interrupted (False: return once the server runs, for tests and scripts).
        compile: compile each model's UNet on first load, and warm the first image model up before serving.

    Returns:
        The running Blocks and its service (when ``block`` is False).

    Raises:
        ValueError: for a port out of range or already in use, or a model folder that is not a pipeline.
    """
    if not 0 < port < 65536:
        raise ValueError(f"--port must be from 1 to 65535, got {port}")
    workdir = check_work_dir(Path(workdir).absolute(), name="--workdir")
    studio = Studio(workdir, models=models, compile=compile)  # checks the model folders before anything is written
    workdir.mkdir(parents=True, exist_ok=True)
    if compile:
        logger.info("compiling and warming up the first image model (a minute or more on a CPU)")
        logger.info("warm-up done in %.0f s", studio.warm_up())
    # Gradio's cache (uploads, served copies of outputs) goes inside the workdir too; components read the
    # variable when they are built, so it is set before build_ui
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / ".gradio")
    demo = build_ui(studio)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            allowed_paths=[str(workdir)],
            max_file_size=MAX_UPLOAD_BYTES,
            css=CSS,
            prevent_thread_lock=not block,
            quiet=not block,
        )
    except OSError as err:
        studio.close()
        raise ValueError(f"cannot serve on {host}:{port} ({err}); pass another --port") from None
    if block:
        studio.close()
    return demo, studio
