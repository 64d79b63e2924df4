"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True), with mixstudio installed."""

from studio.pipelines.music import StudioMusicPipeline  # noqa: F401
