"""Captions of the shapes world: the canonical grammar, paraphrases, and a parser.

Canonical forms (``{c}`` colour, ``{s}`` shape, ``{z}`` size, ``{p}`` position, ``{b}`` background):

* ``a {c} {s} on a {b} background``
* ``a {z} {c} {s} on a {b} background``
* ``a {c} {s} at the {p} on a {b} background``
* ``a {c1} {s1} to the left of a {c2} {s2} on a {b} background``
* ``a {c1} {s1} above a {c2} {s2} on a {b} background``

``parse_caption`` accepts exactly these (case, surrounding spaces and one trailing
full stop are forgiven); paraphrases exist only to train text encoders on words
rather than templates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.render import COLOURS, FORMS, POSITIONS, SHAPES, SIZE_BANDS, Scene


class CaptionError(ClipstudioError, ValueError):
    """A caption outside the canonical grammar (a ValueError and a user-facing error)."""


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; ``None`` = not named (free)."""

    colour: str
    shape: str
    size: Optional[str] = None
    position: Optional[str] = None


@dataclass(frozen=True)
class CaptionSpec:
    """The meaning of a canonical caption: background, one or two objects, relation."""

    background: str
    objects: tuple[ObjectSpec, ...]
    relation: Optional[str] = None  # "to the left of" / "above": objects[0] REL objects[1]

    @property
    def form(self) -> str:
        """The grammar form (one of ``FORMS``)."""
        if self.relation == "to the left of":
            return "left_of"
        if self.relation == "above":
            return "above"
        ob = self.objects[0]
        if ob.size is not None:
            return "sized"
        if ob.position is not None:
            return "positioned"
        return "plain"


# --------------------------------------------------------------------------- scene -> spec
def spec_from_scene(scene: Scene, form: Optional[str] = None) -> CaptionSpec:
    """The spec a scene was sampled for (or a coarser ``form`` that drops size/position)."""
    form = form or scene.form
    if form in ("left_of", "above"):
        if len(scene.objects) != 2 or scene.relation is None:
            raise CaptionError(f"form {form} needs a two-object scene")
        a, b = scene.objects
        return CaptionSpec(scene.background, (ObjectSpec(a.colour, a.shape), ObjectSpec(b.colour, b.shape)),
                           scene.relation)
    ob = scene.objects[0]
    size = ob.size_label if form == "sized" else None
    pos = ob.position_label if form == "positioned" else None
    return CaptionSpec(scene.background, (ObjectSpec(ob.colour, ob.shape, size, pos),), None)


# --------------------------------------------------------------------------- spec -> text
def canonical_caption(spec: CaptionSpec | Scene) -> str:
    """The canonical caption of a spec (or of the form a scene was sampled for)."""
    if isinstance(spec, Scene):
        spec = spec_from_scene(spec)
    b = spec.background
    a = spec.objects[0]
    if spec.relation is not None:
        c = spec.objects[1]
        return f"a {a.colour} {a.shape} {spec.relation} a {c.colour} {c.shape} on a {b} background"
    if a.size is not None:
        return f"a {a.size} {a.colour} {a.shape} on a {b} background"
    if a.position is not None:
        return f"a {a.colour} {a.shape} at the {a.position} on a {b} background"
    return f"a {a.colour} {a.shape} on a {b} background"


PREFIXES: tuple[str, ...] = ("a photo of", "a painting of", "a drawing of", "an image of")
_POSITION_WORDS = {"center": ("the center", "the middle", "the centre"), "left": ("the left",),
                   "right": ("the right",), "top": ("the top",), "bottom": ("the bottom",)}


def _object_phrase(o: ObjectSpec) -> str:
    size = f"{o.size} " if o.size else ""
    return f"a {size}{o.colour} {o.shape}"


def paraphrases(spec: CaptionSpec | Scene) -> list[str]:
    """Reworded captions with the same meaning (the canonical one is not included)."""
    if isinstance(spec, Scene):
        spec = spec_from_scene(spec)
    b = spec.background
    out: list[str] = []
    if spec.relation is not None:
        x, y = spec.objects
        px, py = _object_phrase(x), _object_phrase(y)
        if spec.relation == "to the left of":
            out += [f"{py} to the right of {px} on a {b} background",
                    f"a {b} background with {px} to the left of {py}",
                    f"{px} left of {py}, {b} background"]
        else:
            out += [f"{py} below {px} on a {b} background",
                    f"a {b} background with {px} above {py}",
                    f"{px} over {py}, {b} background"]
    else:
        o = spec.objects[0]
        p = _object_phrase(o)
        if o.position is not None:
            for w in _POSITION_WORDS[o.position]:
                out += [f"a {b} background with a {o.colour} {o.shape} at {w}",
                        f"a {o.colour} {o.shape} in {w} of a {b} background"]
        else:
            out += [f"a {b} background with {p}", f"{p} against a {b} background",
                    f"{p}, {b} background", f"{p} in front of a {b} background"]
            if o.size is not None:
                out.append(f"a {o.colour} {o.shape} that is {o.size}, on a {b} background")
    canon = canonical_caption(spec)
    out += [f"{pre} {canon}" for pre in PREFIXES]
    return out


def random_caption(rng: np.random.Generator, scene: Scene, p_canonical: float = 0.5,
                   p_drop: float = 0.15) -> str:
    """A training caption for ``scene``: canonical or paraphrased; sometimes drops size/position.

    Dropping the size/position (``p_drop``) teaches that unnamed attributes are free.
    """
    form = scene.form
    if form in ("sized", "positioned") and rng.random() < p_drop:
        form = "plain"
    spec = spec_from_scene(scene, form)
    if rng.random() < p_canonical:
        return canonical_caption(spec)
    opts = paraphrases(spec)
    return opts[int(rng.integers(len(opts)))]


def partial_caption(rng: np.random.Generator, scene: Scene) -> str:
    """A caption that leaves the object's colour free (``a circle on a white background``) or names only the
    object's colour (``red``), for a one-object scene. A text-to-image model trained on such captions can
    take "a circle ..." as leaving the colour open and a bare colour word as a negative prompt."""
    if len(scene.objects) != 1:
        raise CaptionError("partial captions are for one-object scenes")
    ob = scene.objects[0]
    if rng.random() < 0.5:
        return ob.colour
    size = f"{ob.size_label} " if scene.form == "sized" else ""
    where = f" at the {ob.position_label}" if scene.form == "positioned" else ""
    return f"a {size}{ob.shape}{where} on a {scene.background} background"


# --------------------------------------------------------------------------- text -> spec
_C = "(" + "|".join(COLOURS) + ")"
_S = "(" + "|".join(SHAPES) + ")"
_Z = "(" + "|".join(SIZE_BANDS) + ")"
_P = "(" + "|".join(POSITIONS) + ")"
_BG = f" on a {_C} background"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("plain", re.compile(f"a {_C} {_S}{_BG}")),
    ("sized", re.compile(f"a {_Z} {_C} {_S}{_BG}")),
    ("positioned", re.compile(f"a {_C} {_S} at the {_P}{_BG}")),
    ("left_of", re.compile(f"a {_C} {_S} to the left of a {_C} {_S}{_BG}")),
    ("above", re.compile(f"a {_C} {_S} above a {_C} {_S}{_BG}")),
]


def parse_caption(text: str) -> CaptionSpec:
    """Parse a canonical caption into a CaptionSpec.

    Raises:
        CaptionError (a ValueError): the text is outside the canonical grammar, or names
            a scene the world never shows (object colour = background, twin colours).
    """
    norm = " ".join(str(text).lower().split()).rstrip(".").strip()
    for form, pat in _PATTERNS:
        m = pat.fullmatch(norm)
        if m is None:
            continue
        g = m.groups()
        if form == "plain":
            spec = CaptionSpec(g[2], (ObjectSpec(g[0], g[1]),))
        elif form == "sized":
            spec = CaptionSpec(g[3], (ObjectSpec(g[1], g[2], size=g[0]),))
        elif form == "positioned":
            spec = CaptionSpec(g[3], (ObjectSpec(g[0], g[1], position=g[2]),))
        else:
            rel = "to the left of" if form == "left_of" else "above"
            spec = CaptionSpec(g[4], (ObjectSpec(g[0], g[1]), ObjectSpec(g[2], g[3])), rel)
        _check_spec(spec, text)
        return spec
    raise CaptionError(f"not a shapes-world caption: {text!r}")


def _check_spec(spec: CaptionSpec, text: str) -> None:
    cols = [o.colour for o in spec.objects]
    if spec.background in cols:
        raise CaptionError(f"object colour equals the background in {text!r}")
    if len(set(cols)) != len(cols):
        raise CaptionError(f"two objects share a colour in {text!r}")


def with_object(spec: CaptionSpec, index: int, **changes: Optional[str]) -> CaptionSpec:
    """A copy of ``spec`` with fields of object ``index`` replaced (for candidate captions)."""
    objs = list(spec.objects)
    objs[index] = replace(objs[index], **changes)
    return replace(spec, objects=tuple(objs))


assert set(FORMS) == {f for f, _ in _PATTERNS}
