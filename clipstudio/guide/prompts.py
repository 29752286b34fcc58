"""Prompt syntax of the VQGAN+CLIP tools: ``text[:weight[:stop]]``, several joined by ``|``.

A negative weight makes a negative prompt (the image is pushed away from it). ``stop`` is a spherical
distance below which the prompt's term is switched off (default: never).

Embedding arithmetic: an item made of ``image:PATH`` and ``text:TEXT`` terms joined by `` + `` and `` - ``
(``image:a.png - image:b.png + text:a red hat``) targets the unit-length sum of its terms' signed embeddings
(the difference of two embeddings is a concept, as with word vectors). ``:weight[:stop]`` after the last
term applies to the whole combination.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from ..errors import ClipstudioError

# CLIP losses are about 1, so a weight's size only sets its share against the others; past this bound the
# weighted loss overflows float32 (``cat:1e300`` made every step non-finite).
MAX_PROMPT_WEIGHT = 1e4


@dataclass(frozen=True)
class Prompt:
    """One weighted prompt: a text, or an image path when ``is_image`` is set."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf
    is_image: bool = False
    # Embedding arithmetic: (sign, text or image path, is_image) per term; empty for a plain prompt.
    terms: tuple[tuple[float, str, bool], ...] = ()


def _looks_like_number_field(field: str) -> bool:
    # A trailing ':field' is read as a number only when it has no spaces, so "note: a cat" stays text.
    stripped = field.strip()
    return bool(stripped) and " " not in stripped


def _parse_number(field: str, what: str, whole: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise ClipstudioError(f"malformed prompt {what} '{field}' in '{whole}': expected a number") from None
    if not math.isfinite(value) and not (what == "stop" and value == -math.inf):
        raise ClipstudioError(f"prompt {what} must be finite in '{whole}'")
    if what == "weight" and abs(value) > MAX_PROMPT_WEIGHT:
        raise ClipstudioError(f"prompt weight {field} is too large in '{whole}' (at most {MAX_PROMPT_WEIGHT:g} "
                              "either way; weights are relative)")
    return value


_TERM_START = re.compile(r"[+-]?\s*(image|text):")
_TERM_SPLIT = re.compile(r"\s+([+-])\s+(?=(?:image|text):)")


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def parse_combination(spec: str) -> Prompt | None:
    """Parse an embedding-arithmetic item (``image:A - text:B + ...[:weight[:stop]]``); None if ``spec`` is
    not one (it does not start with ``image:`` or ``text:``)."""
    body = spec.strip()
    if not _TERM_START.match(body):
        return None
    numbers: list[str] = []
    for _ in range(2):  # trailing numeric fields; a path such as image:b.png is not a number
        head, sep, tail = body.rpartition(":")
        if not sep or not _is_number(tail.strip()) or head.rstrip().endswith(("image", "text")):
            break
        numbers.insert(0, tail)
        body = head.strip()
    parts = _TERM_SPLIT.split(body)
    signed = [("+", parts[0])] + list(zip(parts[1::2], parts[2::2]))
    terms = []
    for sign, term in signed:
        if term.startswith(("+", "-")):
            sign, term = ("-" if (sign == "-") != (term[0] == "-") else "+"), term[1:].strip()
        kind, _, value = term.partition(":")
        if not value.strip():
            raise ClipstudioError(f"empty {kind} term in '{spec}'")
        terms.append((-1.0 if sign == "-" else 1.0, value.strip(), kind == "image"))
    weight = _parse_number(numbers[0], "weight", spec) if numbers else 1.0
    stop = _parse_number(numbers[1], "stop", spec) if len(numbers) > 1 else -math.inf
    return Prompt(text=body, weight=weight, stop=stop, terms=tuple(terms))


def parse_prompt(spec: str, is_image: bool = False) -> Prompt:
    """Parse one ``text[:weight[:stop]]`` item (or an embedding-arithmetic one, see the module docstring)."""
    combination = None if is_image else parse_combination(spec)
    if combination is not None:
        return combination
    whole = spec
    numbers: list[str] = []
    text = spec
    # Peel at most two numeric fields off the right; image paths may hold ':' only in a drive letter.
    for _ in range(2):
        head, sep, tail = text.rpartition(":")
        if not sep or not _looks_like_number_field(tail) or (is_image and len(head) <= 1):
            break
        numbers.insert(0, tail)
        text = head
    text = text.strip()
    if not text:
        raise ClipstudioError(f"empty prompt in '{whole}'")
    weight = _parse_number(numbers[0], "weight", whole) if numbers else 1.0
    stop = _parse_number(numbers[1], "stop", whole) if len(numbers) > 1 else -math.inf
    return Prompt(text=text, weight=weight, stop=stop, is_image=is_image)


def parse_prompts(spec: str) -> list[Prompt]:
    """Parse a ``|``-joined list of text prompts."""
    if not spec or not spec.strip():
        raise ClipstudioError("the prompt is empty")
    return [parse_prompt(item) for item in spec.split("|")]


def negative_prompt(text: str) -> Prompt:
    """The shorthand ``--negative TEXT``: a prompt of weight -1 (an explicit weight keeps its size)."""
    prompt = parse_prompt(text)
    return dataclasses.replace(prompt, weight=-abs(prompt.weight))


def image_prompt(spec: str) -> Prompt:
    """Parse ``PATH[:weight[:stop]]`` as an image prompt."""
    return parse_prompt(spec, is_image=True)
