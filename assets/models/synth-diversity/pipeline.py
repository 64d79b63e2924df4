"""Lets diffusers load this folder where mixstudio is installed:
DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."""

from studio.pipelines.music import StudioMusicPipeline  # noqa: F401
