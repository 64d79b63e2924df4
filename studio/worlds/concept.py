"""A subject the ``shapes`` world never shows, for personalisation (DreamBooth-style) studies.

The concept is an orange crescent on a dark background: a shape outside the world's six (so the base model
has never drawn it and the judges have no class for it), in a colour the world has (so recolouring it is a
measurable edit). ``mixstudio world shapes --concept --n 8 --out concept/`` writes its training images.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.worlds.shapes import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    CELL_FRACTIONS,
    OBJECT_NOUNS,
    OBJECT_RGB,
    POSITION_CELL,
    RADIUS,
    SIZE,
    SUPERSAMPLE,
    TEMPLATES,
    ShapesWorld,
    _background,
    _object_colour,
)

#: What the concept images look like, in the world's vocabulary (the shape has no word in it).
CONCEPT_COLOUR = "orange"
CONCEPT_BACKGROUND = "black"
#: The crescent: a disc of radius r minus a disc of radius ``_BITE·r`` shifted by ``_OFFSET·r``.
_BITE, _OFFSET = 0.8, 0.55
_RADIUS = (8.0, 10.0)
MAX_CONCEPT_IMAGES = 100


def crescent_coverage(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased ``(SIZE, SIZE)`` float32 coverage of a crescent (4×4 sub-samples per pixel).

    Args:
        cx, cy: centre of the outer disc in pixels.
        radius: outer radius in pixels.
        angle: direction the bite is taken from, in radians.
    """
    step = 1.0 / SUPERSAMPLE
    grid = (np.arange(SIZE * SUPERSAMPLE) + 0.5) * step
    xs, ys = grid[None, :] - cx, grid[:, None] - cy
    bx, by = _OFFSET * radius * math.cos(angle), _OFFSET * radius * math.sin(angle)
    inside = (xs * xs + ys * ys <= radius * radius) & ((xs - bx) ** 2 + (ys - by) ** 2 > (_BITE * radius) ** 2)
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)


def render_concept(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` images ``(32, 32, 3)`` uint8 of the concept, jittered in size, place, bite direction and colour.

    Raises:
        ValueError: for ``n`` outside ``1..MAX_CONCEPT_IMAGES``.
    """
    if not 1 <= n <= MAX_CONCEPT_IMAGES:
        raise ValueError(f"--n must be between 1 and {MAX_CONCEPT_IMAGES} concept images, got {n}")
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        background = _background(BACKGROUND_RGB[CONCEPT_BACKGROUND], rng)
        colour = _object_colour(OBJECT_RGB[CONCEPT_COLOUR], rng)
        radius = float(rng.uniform(*_RADIUS))
        cx, cy = (SIZE / 2 + float(rng.uniform(-2.0, 2.0)) for _ in range(2))
        angle = float(rng.uniform(-math.pi / 4, math.pi / 4))  # the bite comes from the right, give or take
        mask = crescent_coverage(cx, cy, radius, angle)
        image = background + mask[..., None] * (colour - background)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return images


def write_concept(out: str | Path, n: int, seed: int = 0, force: bool = False) -> list[Path]:
    """Write :func:`render_concept`'s images as ``out/concept-NN.png`` (the folder replaced atomically).

    Returns:
        The written files, in order.
    """
    from studio.io import atomic_dir, write_png

    images = render_concept(n, seed)
    names = [f"concept-{i:02d}.png" for i in range(n)]
    with atomic_dir(out, force=force) as tmp:
        for name, image in zip(names, images, strict=True):
            write_png(tmp / name, image)
    return [Path(out) / name for name in names]


# ---- a family of subjects, for encoder-based personalisation (mixture-of-attention) -------------------------------
#
# A subject is a silhouette the world never draws, filled with a pattern in two of the world's colours, at a fixed
# rotation: ``"heart-stripes-red-yellow"``. Renders put one subject in a context the world's captions can name
# (position, size, background) and return its exact coverage mask. Held-out subjects are combinations never shown
# in training; every silhouette, pattern and colour is seen, only not together (new individuals of a known kind, as
# a new face is to a face encoder).

#: Subject sizes: the world's medium and large radii (patterns vanish at "small").
SUBJECT_SIZES = ("medium", "large")
REFERENCE_BACKGROUND = "gray"
REFERENCE_RADIUS = 10.0
_PATTERN_PERIOD = 4.0  # pixels


def _polygon(sides: int, scale: float, phase: float = 0.0) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    def inside(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
        apothem = scale * r * math.cos(math.pi / sides)
        hit = np.ones(np.broadcast_shapes(u.shape, v.shape), bool)
        for k in range(sides):
            a = phase + 2 * math.pi * (k + 0.5) / sides
            hit &= u * math.cos(a) + v * math.sin(a) <= apothem
        return hit

    return inside


def _crescent(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return (u * u + v * v <= r * r) & ((u - _OFFSET * r) ** 2 + v * v > (_BITE * r) ** 2)


def _heart(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    x, y = u / (0.95 * r), -(v / (0.95 * r)) * 1.1 + 0.15  # image rows grow downwards
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


def _arrow(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    shaft = (u >= -r) & (u <= 0.1 * r) & (np.abs(v) <= 0.3 * r)
    head = (u >= 0.1 * r) & (u <= r) & (np.abs(v) <= 0.85 * (r - u))
    return shaft | head


def _half_disc(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return (u * u + (v + 0.35 * r) ** 2 <= r * r) & (v + 0.35 * r <= 0)


def _bowtie(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return (np.abs(u) <= r) & (np.abs(v) <= 0.15 * r + 0.75 * np.abs(u))


def _chevron(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    ridge = 0.8 * np.abs(u) - 0.35 * r  # a V opening downwards, 0.45 r thick
    return (np.abs(u) <= r) & (v >= ridge) & (v <= ridge + 0.55 * r)


def _drop(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    cy, rb = 0.3 * r, 0.65 * r
    bulb = u * u + (v - cy) ** 2 <= rb * rb
    cone = (v <= cy) & (v >= -r) & (np.abs(u) <= rb * (v + r) / (cy + r))
    return bulb | cone


#: silhouette name -> inside test ``(u, v, r)`` in the subject's own frame (``r`` the outer radius).
SILHOUETTES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "crescent": _crescent,
    "heart": _heart,
    "diamond": lambda u, v, r: np.abs(u) / 0.7 + np.abs(v) <= r,
    "hexagon": _polygon(6, 0.95),
    "pentagon": _polygon(5, 1.0, phase=math.pi / 2),
    "arrow": _arrow,
    "half-disc": _half_disc,
    "bowtie": _bowtie,
    "chevron": _chevron,
    "drop": _drop,
}


def _stripes(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return np.floor(u / (_PATTERN_PERIOD / 2)) % 2 == 1


def _checker(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    half = _PATTERN_PERIOD / 2
    return (np.floor(u / half) + np.floor(v / half)) % 2 == 1


def _dots(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    du = (u / _PATTERN_PERIOD + 0.5) % 1 - 0.5
    dv = (v / _PATTERN_PERIOD + 0.5) % 1 - 0.5
    return du * du + dv * dv <= 0.3**2


#: pattern name -> where the secondary colour goes, in the subject's own frame (``solid``: nowhere).
PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None] = {
    "solid": None,
    "stripes": _stripes,
    "checker": _checker,
    "dots": _dots,
    "split": lambda u, v, r: u > 0,
    "rim": lambda u, v, r: u * u + v * v >= (0.55 * r) ** 2,
}
COLOURS = tuple(OBJECT_RGB)


@dataclass(frozen=True)
class Subject:
    """One procedural subject: a silhouette, a pattern in two colours, a rotation.

    Attributes:
        silhouette: a key of :data:`SILHOUETTES`.
        pattern: a key of :data:`PATTERNS`.
        primary, secondary: colours of the world (``secondary == primary`` exactly for ``solid``).
    """

    silhouette: str
    pattern: str
    primary: str
    secondary: str

    @property
    def name(self) -> str:
        colours = self.primary if self.pattern == "solid" else f"{self.primary}-{self.secondary}"
        return f"{self.silhouette}-{self.pattern}-{colours}"

    @property
    def angle(self) -> float:
        """The subject's own rotation in radians (part of its identity), from its name."""
        return (zlib.crc32(self.name.encode()) % 1000) / 1000 * math.pi / 4 - math.pi / 8

    @property
    def held_out(self) -> bool:
        """One subject in eight, by a stable hash of its name, never appears in training."""
        return zlib.crc32(("split:" + self.name).encode()) % 8 == 0

    @classmethod
    def parse(cls, name: str) -> Subject:
        """The subject called ``name`` (e.g. ``heart-stripes-red-yellow``, ``drop-solid-blue``).

        Raises:
            ValueError: naming the unknown part and listing the choices.
        """
        for silhouette in sorted(SILHOUETTES, key=len, reverse=True):
            if name.startswith(silhouette + "-"):
                break
        else:
            raise ValueError(f"subject {name!r}: unknown silhouette; use one of {', '.join(SILHOUETTES)}")
        pattern, *colours = name[len(silhouette) + 1 :].split("-")
        if pattern not in PATTERNS:
            raise ValueError(f"subject {name!r}: unknown pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
        wanted = 1 if pattern == "solid" else 2
        if len(colours) != wanted or any(c not in COLOURS for c in colours) or len(set(colours)) != len(colours):
            raise ValueError(
                f"subject {name!r}: a {pattern} subject needs {wanted} different colour(s) of {', '.join(COLOURS)}"
            )
        return cls(silhouette, pattern, colours[0], colours[-1])


def all_subjects(split: str | None = None) -> list[Subject]:
    """Every subject of the family (2880), or those of ``split`` (``"train"`` or ``"held_out"``), in a fixed order."""
    out = []
    for silhouette, pattern, primary in itertools.product(SILHOUETTES, PATTERNS, COLOURS):
        seconds = (primary,) if pattern == "solid" else tuple(c for c in COLOURS if c != primary)
        out += [Subject(silhouette, pattern, primary, s) for s in seconds]
    if split is None:
        return out
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    return [s for s in out if s.held_out == (split == "held_out")]


def render_subject(
    subject: Subject,
    rng: np.random.Generator,
    *,
    position: str = "centre",
    size: str = "large",
    background: str = REFERENCE_BACKGROUND,
    jitter: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``subject`` in a context: ``(image (32, 32, 3) uint8, mask (32, 32) float32 coverage)``.

    Args:
        subject: what to draw.
        rng: the jitter (place ±1 px, radius ±0.4 px, rotation ±0.1 rad, colours, background ramp).
        position, size, background: values of the ``shapes`` world's attributes.
        jitter: False draws the exact centre, radius and colours (the reference image).
    """
    for attr, value in (("position", position), ("background", background)):
        if value not in ATTRIBUTES[attr]:
            raise ValueError(f"{attr} {value!r} unknown; use one of {', '.join(ATTRIBUTES[attr])}")
    if size not in SUBJECT_SIZES:
        raise ValueError(f"size {size!r} unknown for subjects; use one of {', '.join(SUBJECT_SIZES)}")
    col, row = POSITION_CELL[position]
    shift = (lambda: float(rng.uniform(-1.0, 1.0))) if jitter else (lambda: 0.0)
    cx, cy = CELL_FRACTIONS[col] * SIZE + shift(), CELL_FRACTIONS[row] * SIZE + shift()
    radius = RADIUS[size] + (float(rng.uniform(-0.4, 0.4)) if jitter else 0.0)
    angle = subject.angle + (float(rng.uniform(-0.1, 0.1)) if jitter else 0.0)
    if jitter:
        bg = _background(BACKGROUND_RGB[background], rng)
        colours = [_object_colour(OBJECT_RGB[c], rng) for c in (subject.primary, subject.secondary)]
    else:
        bg = np.broadcast_to(np.asarray(BACKGROUND_RGB[background], np.float32), (SIZE, SIZE, 3))
        colours = [np.asarray(OBJECT_RGB[c], np.float32) for c in (subject.primary, subject.secondary)]
    primary, secondary = _subject_coverage(subject, cx, cy, radius, angle)
    image = bg + primary[..., None] * (colours[0] - bg) + secondary[..., None] * (colours[1] - bg)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), primary + secondary


def reference_image(subject: Subject) -> np.ndarray:
    """The one image that introduces ``subject`` to an encoder: centred, large, exact, on the gray background."""
    return render_subject(subject, np.random.default_rng(0), jitter=False)[0]


def _subject_coverage(subject: Subject, cx: float, cy: float, radius: float, angle: float) -> tuple[np.ndarray, ...]:
    """Coverage ``(SIZE, SIZE)`` float32 of the primary and of the secondary colour (4×4 sub-samples per pixel)."""
    step = 1.0 / SUPERSAMPLE
    grid = (np.arange(SIZE * SUPERSAMPLE) + 0.5) * step
    xs, ys = grid[None, :] - cx, grid[:, None] - cy
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = xs * cos + ys * sin, ys * cos - xs * sin
    inside = SILHOUETTES[subject.silhouette](u, v, radius)
    pattern = PATTERNS[subject.pattern]
    second = inside & pattern(u, v, radius) if pattern is not None else np.zeros_like(inside)

    def pool(hits: np.ndarray) -> np.ndarray:
        return hits.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)

    return pool(inside & ~second), pool(second)


@dataclass(frozen=True)
class SubjectSample:
    """One training example of a subject in context.

    Attributes:
        image: ``(32, 32, 3)`` uint8.
        mask: ``(32, 32)`` float32 coverage of the subject.
        text: the caption, naming the subject by a class word (``"a shape on a navy background"``).
        start: character offset of the class word in ``text``.
        context: the position, size and background the image shows.
    """

    image: np.ndarray
    mask: np.ndarray
    text: str
    start: int
    context: dict[str, str]


def subject_caption(context: dict[str, str], rng: np.random.Generator, split: str = "train") -> tuple[str, int]:
    """A caption for a subject in ``context`` that names some of it, with a class word for the subject.

    Position and background are named with probability 0.7 each and size with 0.3, in the world's phrases and
    templates of ``split``; the class word is one of the world's object nouns (``shape``, ``object``, ``thing``).

    Returns:
        ``(text, start)``: the caption and the character offset of its class word.
    """
    table = ShapesWorld.phrases
    noun = OBJECT_NOUNS[int(rng.integers(len(OBJECT_NOUNS)))]
    size = table.pick("size", context["size"], rng, split) + " " if rng.random() < 0.3 else ""
    tail = [table.pick(a, context[a], rng, split) for a in ("position", "background") if rng.random() < 0.7]
    if len(tail) == 2 and rng.random() < 0.5:
        tail.reverse()
    head = ("an " if (size or noun)[0] in "aeiou" else "a ") + size
    templates = TEMPLATES[split]
    template = templates[int(rng.integers(len(templates)))]
    prefix = template[: template.index("{np}")]
    text = template.format(np=head + noun, tail="".join(" " + t for t in tail))
    return text, len(prefix) + len(head)


def subject_sample(subject: Subject, rng: np.random.Generator, split: str = "train") -> SubjectSample:
    """``subject`` in a random context (position, size, background) with a caption that names some of it."""
    context = {
        "position": ATTRIBUTES["position"][int(rng.integers(9))],
        "size": SUBJECT_SIZES[int(rng.integers(len(SUBJECT_SIZES)))],
        "background": ATTRIBUTES["background"][int(rng.integers(4))],
    }
    image, mask = render_subject(subject, rng, **context)
    text, start = subject_caption(context, rng, split)
    return SubjectSample(image, mask, text, start, context)


def subject_by_name(name: str) -> Subject:
    """:meth:`Subject.parse`, or ``held-out:K`` for the K-th held-out subject (0-based)."""
    if name.startswith("held-out:"):
        held_out = all_subjects("held_out")
        k = name.removeprefix("held-out:")
        if not k.isdigit() or int(k) >= len(held_out):
            raise ValueError(f"subject {name!r}: use held-out:K with K in 0..{len(held_out) - 1}")
        return held_out[int(k)]
    return Subject.parse(name)


def write_subject_folder(out: str | Path, subject: Subject, n: int, seed: int = 0, force: bool = False) -> list[Path]:
    """``n`` images of ``subject`` in random contexts as ``out/subject-NN.png``, their masks as
    ``out/masks/subject-NN.png`` (white = subject) and its reference image as ``out/reference/reference.png``.

    Returns:
        The image files, in order.

    Raises:
        ValueError: for ``n`` outside ``1..MAX_CONCEPT_IMAGES``.
    """
    from studio.io import atomic_dir, write_png

    if not 1 <= n <= MAX_CONCEPT_IMAGES:
        raise ValueError(f"--n must be between 1 and {MAX_CONCEPT_IMAGES} subject images, got {n}")
    rng = np.random.default_rng(seed)
    names = [f"subject-{i:02d}.png" for i in range(n)]
    with atomic_dir(out, force=force) as tmp:
        (tmp / "masks").mkdir()
        (tmp / "reference").mkdir()
        for name in names:
            sample = subject_sample(subject, rng)
            write_png(tmp / name, sample.image)
            write_png(tmp / "masks" / name, np.repeat(np.rint(sample.mask * 255).astype(np.uint8)[..., None], 3, -1))
        write_png(tmp / "reference" / "reference.png", reference_image(subject))
    return [Path(out) / name for name in names]
