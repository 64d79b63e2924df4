"""Pictures of results: image grids and spectrogram grids."""

from __future__ import annotations

import numpy as np
import torch


def image_grid(images: list[np.ndarray], cols: int = 8, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Tile ``(H, W, 3)`` uint8 images into one grid image, upscaled ``scale``× (nearest neighbour)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    h, w, _ = images[0].shape
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    grid = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = img.repeat(scale, 0).repeat(scale, 1)
        grid[pad + r * cell_h : pad + r * cell_h + h * scale, pad + c * cell_w : pad + c * cell_w + w * scale] = big
    return grid


def spectrogram_image(audio: np.ndarray, sample_rate: int, n_mels: int = 64, height: int = 96) -> np.ndarray:
    """A coloured log-mel spectrogram of a waveform ``(T,)`` as an ``(height, frames, 3)`` uint8 image."""
    import torchaudio
    from matplotlib import colormaps

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=n_mels)
    spec = mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))).add(1e-8).log10().mul(10)
    spec = (spec - spec.max()).clamp_min(-70).div(70).add(1).flip(0)  # low frequencies at the bottom
    spec = torch.nn.functional.interpolate(spec[None, None], size=(height, spec.shape[1]), mode="bilinear")[0, 0]
    return (colormaps["magma"](spec.numpy())[..., :3] * 255).astype(np.uint8)


def spectrogram_grid(clips: list[np.ndarray], sample_rate: int, cols: int = 4) -> np.ndarray:
    """Spectrograms of several clips tiled into one image."""
    return image_grid([spectrogram_image(c, sample_rate) for c in clips], cols=cols, scale=1, pad=4)


def tradeoff_plot(
    series: dict[str, list[tuple[float, float, str]]],
    *,
    x_label: str = "diversity (eval judge)",
    y_label: str = "prompt adherence (eval judge)",
    title: str = "",
) -> np.ndarray:
    """A scatter-and-line plot of ``(x, y, label)`` points per named series, as an RGB uint8 image.

    Used for adherence-diversity trade-offs: one series per method (e.g. a guidance sweep), each point
    annotated with its setting (e.g. ``w=4``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    try:
        for name, points in series.items():
            xs, ys, _ = zip(*points, strict=True) if points else ((), (), ())
            ax.plot(xs, ys, marker="o", label=name)
            for x, y, label in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel=x_label, ylabel=y_label, title=title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
