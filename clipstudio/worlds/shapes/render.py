"""The shapes world: palette, scenes, sampling and rendering (spec: SHAPES_WORLD.md, issue #3).

The spec is encoded here in code on purpose: the renderer must not depend on any
shared file at run time.  Geometry conventions (all in fractions of the canvas side,
x to the right, y down):

* ``size`` is the side of the shape's bounding box along x (its width).  Circles and
  squares have square boxes; the equilateral triangle (pointing up) is ``size`` wide
  and ``size * sqrt(3) / 2`` high.
* ``(x, y)`` is the centre of the bounding box.

Both renderers share one coverage function: each pixel's coverage is derived from an
(approximate) signed distance to the shape's boundary, so antialiasing only ever
touches pixels within half a pixel of an edge and interior pixels keep the palette
colour exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from clipstudio.errors import ClipstudioError

# --------------------------------------------------------------------------- palette
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZE_BANDS: dict[str, tuple[float, float]] = {"small": (0.22, 0.30), "large": (0.50, 0.62)}
FREE_SIZE: tuple[float, float] = (0.22, 0.62)
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
JITTER = 0.06
RELATIONS: tuple[str, ...] = ("to the left of", "above")
# The five canonical grammar forms; a Scene remembers which one it was sampled for.
FORMS: tuple[str, ...] = ("plain", "sized", "positioned", "left_of", "above")
TRIANGLE_HEIGHT = math.sqrt(3.0) / 2.0  # height / width of an equilateral triangle
# Two objects keep at least this gap (fraction of the side) between their bounding boxes,
# so antialiased edges never touch and a checker sees two separate regions.
MIN_GAP = 0.06
# Anchors for the two-object relation forms (object 1, object 2); the spec's positions.
_RELATION_ANCHORS = {"to the left of": ("left", "right"), "above": ("top", "bottom")}
# Free sizes for two-object scenes: the largest size that fits at a jittered anchor.
TWO_OBJECT_SIZE: tuple[float, float] = (0.22, 0.40)


@dataclass(frozen=True)
class ShapeObject:
    """One shape: kind, palette colour name, size fraction and bounding-box centre.

    ``size_label``/``position_label`` record the named size band / position the object
    was sampled for (``None`` = free), so captions can be made from a scene.
    """

    shape: str
    colour: str
    size: float
    x: float
    y: float
    size_label: Optional[str] = None
    position_label: Optional[str] = None

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding box, in fractions of the side."""
        h = self.size * (TRIANGLE_HEIGHT if self.shape == "triangle" else 1.0)
        return (self.x - self.size / 2, self.y - h / 2, self.x + self.size / 2, self.y + h / 2)


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two objects.

    For two objects, ``relation`` says ``objects[0] <relation> objects[1]``.
    ``form`` is the grammar form the scene was sampled for (one of ``FORMS``).
    """

    background: str
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)
    relation: Optional[str] = None
    form: str = "plain"


# --------------------------------------------------------------------------- validation
def validate_scene(scene: Scene) -> None:
    """Raise ClipstudioError if the scene breaks the world's rules."""
    if scene.background not in PALETTE:
        raise ClipstudioError(f"unknown background colour {scene.background!r}")
    if not 1 <= len(scene.objects) <= 2:
        raise ClipstudioError(f"a scene holds one or two objects, got {len(scene.objects)}")
    for ob in scene.objects:
        if ob.shape not in SHAPES:
            raise ClipstudioError(f"unknown shape {ob.shape!r}")
        if ob.colour not in PALETTE:
            raise ClipstudioError(f"unknown colour {ob.colour!r}")
        if ob.colour == scene.background:
            raise ClipstudioError(f"object colour {ob.colour} equals the background")
        x0, y0, x1, y1 = ob.bbox()
        if x0 < -1e-9 or y0 < -1e-9 or x1 > 1 + 1e-9 or y1 > 1 + 1e-9:
            raise ClipstudioError(f"{ob.colour} {ob.shape} leaves the canvas")
    if len(scene.objects) == 2:
        a, b = scene.objects
        if a.colour == b.colour:
            raise ClipstudioError("two objects in one image must not share a colour")
        if boxes_overlap(a.bbox(), b.bbox(), 0.0):
            raise ClipstudioError("the two objects overlap")


def boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float) -> bool:
    """True if boxes (x0, y0, x1, y1) come closer than ``gap`` on both axes."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


# --------------------------------------------------------------------------- sampling
def _height_factor(shape: str) -> float:
    return TRIANGLE_HEIGHT if shape == "triangle" else 1.0


def _sample_object(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    size_label: Optional[str],
    position_label: Optional[str],
    size_range: tuple[float, float] = FREE_SIZE,
) -> ShapeObject:
    """Sample size and centre for one object honouring its (optional) labels."""
    lo, hi = SIZE_BANDS[size_label] if size_label else size_range
    hf = _height_factor(shape)
    if position_label is None:
        size = float(rng.uniform(lo, hi))
        half_w, half_h = size / 2, size * hf / 2
        x = float(rng.uniform(half_w, 1 - half_w))
        y = float(rng.uniform(half_h, 1 - half_h))
        return ShapeObject(shape, colour, size, x, y, size_label, None)
    ax, ay = POSITIONS[position_label]
    # Largest width that fits when the jitter pushes away from the nearest edge.
    fit_w = 2 * (min(ax, 1 - ax) + JITTER)
    fit_h = 2 * (min(ay, 1 - ay) + JITTER) / hf
    hi = min(hi, fit_w, fit_h)
    if hi < lo:
        raise ClipstudioError(
            f"a {size_label or ''} {shape} cannot be placed at the {position_label}".replace("  ", " ")
        )
    size = float(rng.uniform(lo, hi))
    half_w, half_h = size / 2, size * hf / 2
    x = float(rng.uniform(max(ax - JITTER, half_w), min(ax + JITTER, 1 - half_w)))
    y = float(rng.uniform(max(ay - JITTER, half_h), min(ay + JITTER, 1 - half_h)))
    return ShapeObject(shape, colour, size, x, y, size_label, position_label)


def _pick(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str] = ()) -> str:
    pool = [o for o in options if o not in exclude]
    return pool[int(rng.integers(len(pool)))]


def _place_pair(rng: np.random.Generator, shapes: Sequence[str], colours: Sequence[str], relation: str,
                max_tries: int) -> tuple[ShapeObject, ShapeObject]:
    """Two objects at the relation's anchors, jittered and sized until their boxes keep ``MIN_GAP`` apart."""
    p1, p2 = _RELATION_ANCHORS[relation]
    for _ in range(max_tries):
        a = _sample_object(rng, shapes[0], colours[0], None, p1, TWO_OBJECT_SIZE)
        b = _sample_object(rng, shapes[1], colours[1], None, p2, TWO_OBJECT_SIZE)
        if not boxes_overlap(a.bbox(), b.bbox(), MIN_GAP):
            break
    else:  # pragma: no cover - the anchors are far enough apart that this never happens
        raise ClipstudioError("could not place two non-overlapping objects")
    # The anchors are an implementation detail: the caption names only the relation.
    return ShapeObject(a.shape, a.colour, a.size, a.x, a.y), ShapeObject(b.shape, b.colour, b.size, b.x, b.y)


def sample_scene(
    rng: np.random.Generator,
    form: Optional[str] = None,
    *,
    background: Optional[str] = None,
    colours: Sequence[Optional[str]] = (),
    shapes: Sequence[Optional[str]] = (),
    size: Optional[str] = None,
    position: Optional[str] = None,
    max_tries: int = 200,
) -> Scene:
    """Sample a random scene for a grammar form, honouring any attributes given.

    Args:
        rng: numpy random Generator (the only source of randomness, for reproducibility).
        form: one of ``FORMS``; ``None`` picks one uniformly.
        background, colours, shapes: fix the background / per-object colours / shapes
            (``None`` entries are free).  Free colours never equal the background or
            the other object.
        size: size band name ("small"/"large"); drawn at random for the ``sized`` form.
        position: position name; drawn at random for the ``positioned`` form.
            Both apply to one-object forms only; an impossible combination (a large
            shape at the left) raises ClipstudioError.
    Returns:
        A valid Scene (see ``validate_scene``).
    """
    if form is None:
        form = FORMS[int(rng.integers(len(FORMS)))]
    if form not in FORMS:
        raise ClipstudioError(f"unknown scene form {form!r}; expected one of {', '.join(FORMS)}")
    n_obj = 2 if form in ("left_of", "above") else 1
    if size is not None and size not in SIZE_BANDS:
        raise ClipstudioError(f"unknown size {size!r}; expected small or large")
    if position is not None and position not in POSITIONS:
        raise ClipstudioError(f"unknown position {position!r}; expected one of {', '.join(POSITIONS)}")
    colours = list(colours) + [None] * (n_obj - len(colours))
    shapes = list(shapes) + [None] * (n_obj - len(shapes))
    fixed = [c for c in colours if c is not None]
    if background is None:
        background = _pick(rng, COLOURS, exclude=fixed)
    chosen_colours: list[str] = []
    for c in colours[:n_obj]:
        chosen_colours.append(c if c is not None else _pick(rng, COLOURS, [background, *fixed, *chosen_colours]))
    chosen_shapes = [s if s is not None else _pick(rng, SHAPES) for s in shapes[:n_obj]]
    if form == "sized" and size is None:
        size = _pick(rng, tuple(SIZE_BANDS))
    if form == "positioned" and position is None:
        position = _pick(rng, tuple(POSITIONS))

    if n_obj == 1:
        # size / position are honoured whenever given (the form only decides the defaults)
        ob = _sample_object(rng, chosen_shapes[0], chosen_colours[0], size, position)
        scene = Scene(background, (ob,), None, form)
    else:
        relation = "to the left of" if form == "left_of" else "above"
        scene = Scene(background, _place_pair(rng, chosen_shapes, chosen_colours, relation, max_tries), relation, form)
    validate_scene(scene)
    return scene


# --------------------------------------------------------------------------- rendering
_SHAPE_CODE = {s: i for i, s in enumerate(SHAPES)}
_PALETTE_T = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32)
_COLOUR_CODE = {c: i for i, c in enumerate(COLOURS)}


def _scene_arrays(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Pack scenes into (N, 2) parameter tensors; missing second objects are flagged absent."""
    n = len(scenes)
    shape = np.zeros((n, 2), dtype=np.int64)
    colour = np.zeros((n, 2), dtype=np.int64)
    geo = np.zeros((n, 2, 3), dtype=np.float32)  # x, y, size
    present = np.zeros((n, 2), dtype=bool)
    bg = np.zeros(n, dtype=np.int64)
    for i, sc in enumerate(scenes):
        bg[i] = _COLOUR_CODE[sc.background]
        for j, ob in enumerate(sc.objects[:2]):
            shape[i, j] = _SHAPE_CODE[ob.shape]
            colour[i, j] = _COLOUR_CODE[ob.colour]
            geo[i, j] = (ob.x, ob.y, ob.size)
            present[i, j] = True
    return {"shape": torch.from_numpy(shape), "colour": torch.from_numpy(colour), "geo": torch.from_numpy(geo),
            "present": torch.from_numpy(present), "bg": torch.from_numpy(bg)}


def _coverage(arr: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """(N, 2, H, W) coverage in [0, 1] of each object; exactly 1 inside, 0 outside.

    Distances are measured in pixels, and coverage = clamp(0.5 - d, 0, 1): only pixels
    whose centre lies within half a pixel of an edge get a fractional value.
    """
    c = (torch.arange(size, dtype=torch.float32) + 0.5)  # pixel centres
    px = c.view(1, 1, 1, size)
    py = c.view(1, 1, size, 1)
    x = arr["geo"][..., 0, None, None] * size
    y = arr["geo"][..., 1, None, None] * size
    w = arr["geo"][..., 2, None, None] * size
    dx, dy = px - x, py - y
    # circle: distance to the rim
    d_circle = torch.sqrt(dx * dx + dy * dy) - w / 2
    # square: Chebyshev distance to the sides
    d_square = torch.maximum(dx.abs(), dy.abs()) - w / 2
    # triangle (apex up): max of the three edge half-plane distances.  Base at y + h/2,
    # apex at (x, y - h/2); slanted edges have outward normals (+-sqrt(3)/2, -1/2).
    h = w * TRIANGLE_HEIGHT
    d_base = dy - h / 2
    # distance from the right edge through the apex (x, y - h/2) and (x + w/2, y + h/2)
    d_side = (dx.abs() * TRIANGLE_HEIGHT + (dy + h / 2) * -0.5)  # 0 on the apex
    # Clip to the bounding box so the sharp corners do not bleed past it when antialiased.
    d_box = torch.maximum(dx.abs() - w / 2, -(dy + h / 2))
    d_tri = torch.maximum(torch.maximum(d_base, d_side), d_box)
    code = arr["shape"][..., None, None]
    d = torch.where(code == 0, d_circle, torch.where(code == 1, d_square, d_tri))
    cov = (0.5 - d).clamp(0.0, 1.0)
    return cov * arr["present"][..., None, None].float()


def render_batch(scenes: Sequence[Scene], size: int = 64) -> torch.Tensor:
    """Render scenes to a float tensor (N, 3, size, size) in [0, 1], fast and batched.

    Pixel values are the palette's sRGB values / 255 (interior exact up to float32).
    """
    if size < 8:
        raise ClipstudioError(f"canvas size must be at least 8 px, got {size}")
    if not scenes:
        return torch.zeros(0, 3, size, size)
    arr = _scene_arrays(scenes)
    cov = _coverage(arr, size)  # (N, 2, H, W)
    pal = _PALETTE_T / 255.0
    img = pal[arr["bg"]][:, :, None, None].expand(-1, -1, size, size)
    for j in range(2):  # objects never overlap, so compositing order does not matter
        col = pal[arr["colour"][:, j]][:, :, None, None]
        a = cov[:, j : j + 1]
        img = img * (1 - a) + col * a
    return img.contiguous()


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Render one scene to a uint8 array (size, size, 3); interior colours are exact."""
    validate_scene(scene)
    arr = _scene_arrays([scene])
    cov = _coverage(arr, size)[0].numpy().astype(np.float64)
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = np.asarray(PALETTE[scene.background], dtype=np.float64)
    for j, ob in enumerate(scene.objects):
        a = cov[j][..., None]
        img = img * (1 - a) + np.asarray(PALETTE[ob.colour], dtype=np.float64) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
