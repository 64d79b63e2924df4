"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True), with mixstudio installed."""

from studio.pipelines.image import StudioImagePipeline  # noqa: F401
