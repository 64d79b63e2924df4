"""The Separate tab's layout: pick an input (an upload, a clip from the Music tab, or a synth world clip whose true
stems are known), pick a separator, hear and download each stem, see its spectrogram and, for a world clip, the
SDR table."""

from __future__ import annotations

import gradio as gr

from studio.app.handlers import MAX_STEMS, Handlers

SOURCES = ["upload a file", "a clip from the Music tab", "a synth world clip (true stems known)"]


def separate_tab(h: Handlers, heavy: dict, light: dict) -> tuple[gr.Dropdown, gr.Dropdown]:
    """The tab; returns the separator and clip pickers (refreshed with the app's other lists)."""
    separators = h.studio.list_separators()
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(
                choices=separators, value=separators[0] if separators else None, label="separator",
                elem_id="separate-model",
            )  # fmt: skip
            source = gr.Radio(SOURCES, value=SOURCES[0], label="input", elem_id="separate-source")
            upload = gr.Audio(label="WAV or FLAC file", type="filepath", sources=["upload"], elem_id="separate-upload")
            clip = gr.Dropdown(
                choices=h.studio.music_clips(), label="clip from the Music tab", elem_id="separate-clip"
            )
            seed = gr.Number(value=0, precision=0, label="world clip seed", elem_id="separate-seed")
            button = gr.Button("Separate", variant="primary", elem_id="separate-run")
        with gr.Column():
            players, pictures = [], []
            for i in range(MAX_STEMS):
                with gr.Row():
                    players.append(gr.Audio(type="filepath", visible=False, elem_id=f"separate-stem-{i}"))
                    pictures.append(gr.Image(label="spectrogram", visible=False, height=120))
            status = gr.Markdown(elem_id="separate-status")
            scores = gr.Dataframe(label="scores against the true stems (dB)", elem_id="separate-scores")
            files = gr.File(label="stems", file_count="multiple")
    outputs = [*players, *pictures, files, scores, status]
    button.click(h.separate, [model, source, upload, clip, seed], outputs, **heavy)
    clip.focus(h.clip_choices, clip, clip, **light)
    return model, clip
