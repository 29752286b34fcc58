"""An independent colour-and-geometry checker for shapes-world captions.

It knows nothing of any model: it reads pixels only.  Every pixel is assigned to its
nearest palette colour when within ``max_colour_dist`` (RGB Euclidean), otherwise to
nothing.  Then, for a canonical caption:

* background: the dominant assigned colour must be the one named;
* each object: the pixels of its named colour must mostly (``min_coherence``) lie in one
  4-connected region of at least ``min_area`` of the image;
* shape: fill ratio of that region's bounding box (circle ~0.785, square ~1.0,
  triangle ~0.5), its aspect ratio, and for triangles that the mass sits low (apex up);
* size band / position / relation, when the caption names them, from the bounding box
  (size = its width as a fraction of the side, position = its centre) and centroids;
* no extra object: no other solid region of another colour as big as a small shape.

The tolerances are meant for generated images, which are never pixel-exact.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.captions import CaptionSpec, parse_caption
from clipstudio.worlds.shapes.render import COLOURS, PALETTE, POSITIONS, SIZE_BANDS

ImageLike = Union[np.ndarray, "PIL.Image.Image"]  # noqa: F821

_PAL = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)

# Tolerances (fractions of the image side unless stated).
MAX_COLOUR_DIST = 80.0  # RGB distance; palette colours are >= ~90 apart, so no two overlap
MIN_BACKGROUND_FRACTION = 0.30
MIN_AREA = 0.008  # smallest shape (triangle 0.22 wide) covers ~0.021 of the image
MIN_COHERENCE = 0.75  # share of a colour's pixels in its largest connected region
SIZE_TOL = 0.05
POSITION_TOL = 0.12  # spec jitter 0.06 plus slack
EXTRA_OBJECT_AREA = 0.012
EXTRA_OBJECT_FILL = 0.35  # antialiasing rings are thin: their bounding-box fill stays low
SMALL_REGION_PX = 16  # below this width (pixels) shapes are judged by template IoU, not fill
# Fill-ratio bands of the bounding box.
TRIANGLE_MAX_FILL = 0.64
SQUARE_MIN_FILL = 0.89


@dataclass
class CheckResult:
    """Outcome of ``check_image``: ``passed`` iff ``failures`` is empty."""

    passed: bool
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def to_array(img: ImageLike) -> np.ndarray:
    """An HxWx3 uint8 array from a numpy array or PIL image."""
    if not isinstance(img, np.ndarray):
        try:
            img = np.asarray(img.convert("RGB"))
        except AttributeError as err:
            raise ClipstudioError(f"check_image needs a numpy array or PIL image, got {type(img).__name__}") from err
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ClipstudioError(f"check_image needs an HxWx3 uint8 image, got {img.dtype} {img.shape}")
    return img


def classify_pixels(img: np.ndarray, max_dist: float = MAX_COLOUR_DIST) -> np.ndarray:
    """HxW int array: index into ``COLOURS`` of each pixel's nearest colour, -1 if none near."""
    d = np.linalg.norm(img.astype(np.float32)[:, :, None, :] - _PAL[None, None], axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > max_dist] = -1
    return lab


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labelling of a boolean mask: (labels with 0 = background, count)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        q = deque([(y0, x0)])
        while q:
            y, x = q.popleft()
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    q.append((yy, xx))
    return labels, n


def region_stats(region: np.ndarray) -> dict[str, float]:
    """Geometry of a boolean region, in fractions of the image side."""
    h, w = region.shape
    ys, xs = np.nonzero(region)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = (x1 - x0), (y1 - y0)
    area = float(region.sum())
    return {
        "area": area / (h * w),
        "fill": area / float(bw * bh),
        "aspect": bw / float(bh),
        "width": bw / w,
        "height": bh / h,
        "cx": (x0 + x1) / 2 / w,
        "cy": (y0 + y1) / 2 / h,
        "centroid_x": (xs.mean() + 0.5) / w,
        "centroid_y": (ys.mean() + 0.5) / h,
        # where the mass centre sits inside the box, 0 = top, 1 = bottom (triangle up ~0.56-0.67)
        "mass_y": (ys.mean() + 0.5 - y0) / bh,
    }


def classify_shape(st: dict[str, float]) -> str:
    """'circle' / 'square' / 'triangle' / 'unknown' from fill ratio, aspect and mass."""
    fill, aspect = st["fill"], st["aspect"]
    if fill < TRIANGLE_MAX_FILL:
        # an apex-up triangle is wider than high (1.155) and bottom-heavy
        if 0.9 <= aspect <= 1.5 and st["mass_y"] > 0.54 and fill > 0.35:
            return "triangle"
        return "unknown"
    if not 0.8 <= aspect <= 1.25:
        return "unknown"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (pixels outside the image count as set, so edges do not erode)."""
    p = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= p[dy:dy + h, dx:dx + w]
    return out


def _largest_region(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The largest 4-connected region of ``mask`` and its coherence.

    Coherence = largest / (largest + the solid rest), where "solid" means surviving a 3x3
    erosion: antialiased edges between two other colours can blend into this colour
    (red + blue ~ purple) but only as 1-pixel fringes, which must not count as scatter.
    """
    labels, n = connected_components(mask)
    if n == 0:
        return np.zeros_like(mask), 0.0
    counts = np.bincount(labels.ravel())[1:]
    k = int(counts.argmax()) + 1
    region = labels == k
    rest = int((erode(mask) & ~region).sum())
    return region, float(counts.max() / (counts.max() + rest))


def soft_coverage(img: np.ndarray, colour: str, background: str, region: np.ndarray, pad: int = 2) -> np.ndarray:
    """Per-pixel share of ``colour`` over ``background`` near ``region`` (0 elsewhere).

    Projecting each pixel on the background->object colour line recovers the antialiased
    edge coverage, which small shapes need to be told apart.
    """
    h, w = region.shape
    ys, xs = np.nonzero(region)
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)
    o = np.asarray(PALETTE[colour], np.float32)
    b = np.asarray(PALETTE[background], np.float32)
    a = ((img.astype(np.float32) - b) @ (o - b)) / float((o - b) @ (o - b))
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = np.clip(a[y0:y1, x0:x1], 0.0, 1.0)
    return out


def template_shape(st: dict[str, float], alpha: np.ndarray, pad: int = 2) -> tuple[str, float]:
    """Best-matching ideal shape by soft IoU against the coverage map ``alpha``.

    Used for small regions, where pixel quantisation makes the fill ratio unreliable.
    Templates are drawn by the same coverage model at the same resolution, over a small
    grid of widths and sub-pixel offsets around the measured bounding box, inside a
    window around the box (cheap: the window is only a few pixels wide).
    """
    from clipstudio.worlds.shapes.render import Scene, ShapeObject, _coverage, _scene_arrays

    h, w = alpha.shape
    bw, bh = st["width"] * w, st["height"] * h
    x0 = max(0, int(np.floor(st["cx"] * w - bw / 2)) - pad)
    y0 = max(0, int(np.floor(st["cy"] * h - bh / 2)) - pad)
    win = alpha[y0:y0 + int(np.ceil(max(bw, bh))) + 2 * pad + 1, x0:x0 + int(np.ceil(max(bw, bh))) + 2 * pad + 1]
    side = max(win.shape)
    cx, cy = st["cx"] * w - x0, st["cy"] * h - y0  # box centre in window pixels
    cands, names = [], []
    for shape in ("circle", "square", "triangle"):
        base = bw if shape == "triangle" else (bw + bh) / 2
        for dwidth in (-1.0, -0.5, 0.0, 0.5, 1.0):
            for ddx in (-0.5, 0.0, 0.5):
                for ddy in (-0.5, 0.0, 0.5):
                    ob = ShapeObject(shape, "white", max(1.0, base + dwidth) / side,
                                     (cx + ddx) / side, (cy + ddy) / side)
                    cands.append(Scene("black", (ob,)))
                    names.append(shape)
    t = _coverage(_scene_arrays(cands), side)[:, 0, :win.shape[0], :win.shape[1]].numpy()
    a = win[None]
    iou = np.minimum(t, a).sum((1, 2)) / np.maximum(np.maximum(t, a).sum((1, 2)), 1e-6)
    k = int(iou.argmax())
    return (names[k] if iou[k] >= 0.6 else "unknown"), float(iou[k])


def _check_background(counts: np.ndarray, spec: CaptionSpec, failures: list[str]) -> dict[str, Any]:
    dom = int(counts.argmax())
    if COLOURS[dom] != spec.background:
        failures.append(f"background is {COLOURS[dom]}, not {spec.background}")
    elif counts[dom] < MIN_BACKGROUND_FRACTION:
        failures.append(f"background {spec.background} covers only {counts[dom]:.2f} of the image")
    return {"dominant": COLOURS[dom], "fraction": float(counts[dom])}


def _check_object(arr: np.ndarray, lab: np.ndarray, ob, background: str, failures: list[str]
                  ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(region stats or None when the object is missing, details) of one named object, failures appended."""
    h, w = lab.shape
    mask = lab == COLOURS.index(ob.colour)
    region, coherence = _largest_region(mask)
    if not region.any() or region.sum() / (h * w) < MIN_AREA:
        failures.append(f"no {ob.colour} object big enough")
        return None, {"area": float(mask.sum()) / (h * w)}
    st = region_stats(region)
    st["coherence"] = coherence
    st["shape"] = classify_shape(st)
    if st["width"] * w < SMALL_REGION_PX:
        alpha = soft_coverage(arr, ob.colour, background, region)
        st["shape"], st["template_iou"] = template_shape(st, alpha)
    if coherence < MIN_COHERENCE:
        failures.append(f"{ob.colour} pixels are scattered (largest region {coherence:.2f})")
    if st["shape"] != ob.shape:
        failures.append(f"{ob.colour} object looks like a {st['shape']}, not a {ob.shape} "
                        f"(fill {st['fill']:.2f}, aspect {st['aspect']:.2f})")
    if ob.size is not None:
        lo, hi = SIZE_BANDS[ob.size]
        if not lo - SIZE_TOL <= st["width"] <= hi + SIZE_TOL:
            failures.append(f"{ob.colour} {ob.shape} is {st['width']:.2f} wide, not {ob.size} ({lo}-{hi})")
    if ob.position is not None:
        px, py = POSITIONS[ob.position]
        if abs(st["cx"] - px) > POSITION_TOL or abs(st["cy"] - py) > POSITION_TOL:
            failures.append(f"{ob.colour} {ob.shape} is centred at ({st['cx']:.2f}, {st['cy']:.2f}), "
                            f"not at the {ob.position}")
    return st, st


def _check_relation(spec: CaptionSpec, first: dict[str, Any], second: dict[str, Any],
                    failures: list[str]) -> dict[str, float]:
    dx = second["centroid_x"] - first["centroid_x"]
    dy = second["centroid_y"] - first["centroid_y"]
    a, b = spec.objects
    if spec.relation == "to the left of" and not (dx > 0 and abs(dx) > abs(dy)):
        failures.append(f"the {a.colour} {a.shape} is not to the left of the {b.colour} {b.shape}")
    if spec.relation == "above" and not (dy > 0 and abs(dy) > abs(dx)):
        failures.append(f"the {a.colour} {a.shape} is not above the {b.colour} {b.shape}")
    return {"dx": dx, "dy": dy}


def _extra_objects(lab: np.ndarray, counts: np.ndarray, spec: CaptionSpec) -> list[str]:
    """Colours the caption does not name that form a solid object of their own."""
    named = {COLOURS.index(spec.background)} | {COLOURS.index(o.colour) for o in spec.objects}
    extras = []
    for ci in range(len(COLOURS)):
        if ci in named or counts[ci] < EXTRA_OBJECT_AREA:
            continue
        # eroded first: blended 1-pixel fringes between two named colours are not objects
        solid = erode(lab == ci)
        if not solid.any():
            continue
        region, _ = _largest_region(solid)
        st = region_stats(region)
        if st["area"] >= EXTRA_OBJECT_AREA / 2 and st["fill"] >= EXTRA_OBJECT_FILL:
            extras.append(COLOURS[ci])
    return extras


def check_image(img: ImageLike, caption: str | CaptionSpec) -> CheckResult:
    """Judge whether ``img`` shows the canonical ``caption`` by colour and geometry alone.

    Raises:
        ValueError (CaptionError): the caption is outside the canonical grammar.
        ClipstudioError: the image is not an HxWx3 uint8 array or PIL image.
    """
    spec = caption if isinstance(caption, CaptionSpec) else parse_caption(caption)
    arr = to_array(img)
    h, w, _ = arr.shape
    lab = classify_pixels(arr)
    failures: list[str] = []
    details: dict[str, Any] = {"size": (h, w)}
    counts = np.bincount(lab[lab >= 0].ravel(), minlength=len(COLOURS)) / float(h * w)
    details["background"] = _check_background(counts, spec, failures)
    stats = []
    for i, ob in enumerate(spec.objects):
        st, details[f"object{i + 1}"] = _check_object(arr, lab, ob, spec.background, failures)
        stats.append(st)
    if spec.relation is not None and stats[0] is not None and stats[1] is not None:
        details["relation"] = _check_relation(spec, stats[0], stats[1], failures)
    extras = _extra_objects(lab, counts, spec)
    if extras:
        failures.append(f"extra object(s) of colour {', '.join(extras)}")
    details["extra"] = extras
    return CheckResult(not failures, failures, details)
