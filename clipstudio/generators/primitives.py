"""The ``primitives`` generator: a few flat-coloured, differentiably rasterized shapes over a flat background,
in the spirit of CLIPDraw (Frans et al. 2021), which optimizes vector strokes instead of pixels.

Each primitive has a position, a size, a colour, an opacity and a shape type (circle, axis-aligned square,
upward equilateral triangle). Coverage comes from a signed distance to the shape's edge through a sigmoid a
pixel or so wide, so gradients reach position and size through the edges. The shape type is chosen
straight-through: the forward pass draws the most likely type, the backward pass follows the softmax.
Such an image has no pixel-scale texture in which an adversarial pattern could hide.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..errors import ClipstudioError
from .base import Choice, Generator, parse_options, resize_init

SHAPE_TYPES = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 0.1, 0.75  # bounding-box side, as a fraction of the canvas side
_SQRT3 = math.sqrt(3.0)


@dataclasses.dataclass
class PrimitivesOptions:
    """Options of the ``primitives`` generator (a world's recipe supplies its palette, grid and sizes)."""

    count: int = 2  # how many shapes (1 to 16)
    edge: float = 0.4  # edge softness, in pixels
    # A limited palette, as in pixray: comma-separated #rrggbb colours, each chosen straight-through;
    # "none" frees the colours.
    palette: str = "none"
    anneal_steps: int = 0  # soft discrete choices hardening over this many steps (0: straight-through)
    distinct: bool = True  # with a palette, the search keeps shapes' colours apart and off the background
    shape_cost: float = 0.02  # how much a drawn shape must lower the loss in the search to be kept
    # The coarse grid a search may put a shape's centre on, and the sizes it may try (fractions of the
    # canvas side); the gradient steps refine both afterwards.
    grid: tuple = (0.25, 0.5, 0.75)
    search_sizes: tuple = (0.25, 0.4, 0.55)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def circle_sdf(dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance to a circle of diameter ``size`` centred at the origin (negative inside)."""
    return (dx * dx + dy * dy).sqrt() - size / 2


def square_sdf(dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance to an axis-aligned square of side ``size`` centred at the origin."""
    return torch.maximum(dx.abs(), dy.abs()) - size / 2


def triangle_sdf(dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Distance (max of three half-planes) to an upward equilateral triangle whose bounding box of width
    ``size`` and height ``size*sqrt(3)/2`` is centred at the origin (y points down)."""
    half_h = size * _SQRT3 / 4
    base = dy - half_h  # below the base edge is outside
    # The slanted edges run from the apex (0, -half_h) to the base corners; outward unit normals (+-sqrt3/2, -1/2).
    slant = (_SQRT3 / 2) * dx.abs() - 0.5 * (dy + half_h)
    return torch.maximum(base, slant)


SDFS = (circle_sdf, square_sdf, triangle_sdf)


def _logit_choice(name: str, logits: torch.Tensor) -> Choice:
    """A choice over the entries of a 1-D logits tensor: setting option ``v`` makes it the clear argmax."""

    def set_option(value: int) -> None:
        logits.fill_(0.0)
        logits[value] = 3.0

    return Choice(name, logits.numel(), lambda: int(logits.argmax()), set_option)


def _size_logit(size: float) -> float:
    """The ``size_logit`` that gives a bounding-box side of ``size``."""
    return float(_logit(torch.tensor((size - MIN_SIZE) / (MAX_SIZE - MIN_SIZE))))


def parse_palette(spec: str | None) -> torch.Tensor | None:
    """``None``/``none`` (free colours) or comma-separated ``#rrggbb`` colours, as an (N, 3) tensor in [0, 1]."""
    if spec in (None, "", "none"):
        return None
    try:
        hexes = [c.strip().lstrip("#") for c in spec.split(",")]
        colours = [[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in hexes if len(h) == 6]
    except ValueError:
        colours = []
    if len(colours) < 2 or len(colours) != len(hexes):
        raise ClipstudioError(f"palette must be 'none' or '#rrggbb,#rrggbb,...' (two colours or more), got {spec!r}")
    return torch.tensor(colours, dtype=torch.float32) / 255


def _sizes(size_logit: torch.Tensor) -> torch.Tensor:
    """Bounding-box sides, as fractions of the canvas side, of size logits (any shape)."""
    return MIN_SIZE + (MAX_SIZE - MIN_SIZE) * torch.sigmoid(size_logit)


def _hard_alphas(opacity: torch.Tensor) -> torch.Tensor:
    """Each primitive is either drawn or not: hard 0/1 forward, sigmoid gradient backward, so no half-transparent
    ghost can linger that the prompt never asked for."""
    soft = torch.sigmoid(opacity)
    return (soft > 0.5).to(soft) + soft - soft.detach()


def straight_through_choice(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax in the forward pass, the softmax's gradient in the backward pass."""
    soft = logits.softmax(-1)
    hard = nn.functional.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft)
    return hard + soft - soft.detach()


class PrimitivesGenerator(Generator):
    """``count`` shapes over a background; options are the fields of :class:`PrimitivesOptions`.

    :meth:`choices` exposes the discrete decisions (background and shape colours when a palette is set,
    whether each shape is drawn, its type, a coarse position and size) for the studio's search.
    """

    search_options = ("distinct", "shape_cost", "grid", "search_sizes")

    def __init__(self, size: tuple[int, int], init_image: torch.Tensor | None = None, **options):
        super().__init__(size, init_image)
        opts = parse_options(PrimitivesOptions, options, "primitives")
        if not 1 <= opts.count <= 16 or opts.edge <= 0:
            raise ClipstudioError(f"primitives needs 1 <= count <= 16 and edge > 0, got {opts.count}, {opts.edge}")
        if not opts.grid or not opts.search_sizes or not all(0 < v < 1 for v in opts.grid + opts.search_sizes):
            raise ClipstudioError("primitives options grid and search_sizes must be fractions between 0 and 1")
        self.options = opts
        self.count, self.edge, self.distinct, self.shape_cost = opts.count, opts.edge, opts.distinct, opts.shape_cost
        self.anneal_steps, self.grid, self.search_sizes = opts.anneal_steps, opts.grid, opts.search_sizes
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # The search's "swap" moves are state too: a restart or a resume must know which way round it is.
        self.register_buffer("swapped", torch.zeros((), dtype=torch.long))
        self.register_buffer("colours_swapped", torch.zeros((), dtype=torch.long))
        palette_colours = parse_palette(opts.palette)
        if palette_colours is not None:
            self.register_buffer("palette", palette_colours, persistent=False)
        else:
            self.palette = None
        k = self.count
        background = torch.rand(3) * 0.5 + 0.25
        if init_image is not None:  # the init image's mean colour becomes the background
            background = resize_init(init_image, self.width, self.height).mean(dim=(0, 2, 3))
        if self.palette is None:
            self.background = nn.Parameter(_logit(background))
            self.colour = nn.Parameter(torch.randn(k, 3))
        else:  # logits over the palette's colours
            self.background = nn.Parameter(torch.randn(len(self.palette)) * 0.1)
            self.colour = nn.Parameter(torch.randn(k, len(self.palette)) * 0.1)
        self.position = nn.Parameter(_logit(torch.rand(k, 2) * 0.5 + 0.25))
        self.size_logit = nn.Parameter(_logit(torch.rand(k) * 0.4 + 0.3))
        self.opacity = nn.Parameter(torch.full((k,), 2.0))
        self.shape_logits = nn.Parameter(torch.randn(k, len(SHAPE_TYPES)) * 0.1)
        ys = (torch.arange(self.height) + 0.5) / self.height
        xs = (torch.arange(self.width) + 0.5) / self.width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("grid_x", grid_x, persistent=False)
        self.register_buffer("grid_y", grid_y, persistent=False)

    def sizes(self) -> torch.Tensor:
        """Bounding-box sides as fractions of the canvas side."""
        return _sizes(self.size_logit)

    def shape_weights(self) -> torch.Tensor:
        """Straight-through one-hot shape choice: hard forward, softmax gradient backward."""
        return self.choice(self.shape_logits)

    def temperature(self) -> float:
        """Softmax temperature of the discrete choices now (0 once annealing is over)."""
        if not self.anneal_steps or int(self.steps_done) >= self.anneal_steps:
            return 0.0
        return 0.02 ** (int(self.steps_done) / self.anneal_steps)

    def choice(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft choice while annealing, then straight-through hard choice."""
        tau = self.temperature()
        return (logits / tau).softmax(-1) if tau > 0 else straight_through_choice(logits)

    def post_step(self) -> None:
        self.steps_done += 1

    def choices(self) -> list[Choice]:
        """Background colour, then per shape: its colour (or not drawn), type, position on a 3x3 grid, size.

        With a palette, "not drawn" is the colour choice's last option, so turning a shape on and giving it
        the right colour is one move of the search rather than two that each look worse alone.
        """
        found = []
        if self.palette is not None:
            background = _logit_choice("background", self.background.data)
            found.append(dataclasses.replace(background, allowed=lambda v: v not in self._used_colours()))
        for i in range(self.count):
            if self.palette is not None:
                found.append(self._colour_or_hidden_choice(i))
            else:
                found.append(Choice(f"shape{i}.drawn", 2, lambda i=i: int(self.opacity.data[i] > 0),
                                    lambda v, i=i: self.opacity.data[i].fill_(2.0 if v else -2.0)))
            found.append(_logit_choice(f"shape{i}.type", self.shape_logits.data[i]))
            found.append(Choice(f"shape{i}.position", len(self.grid) ** 2, lambda i=i: self._grid_index(i),
                                lambda v, i=i: self._set_grid(i, v)))
            found.append(Choice(f"shape{i}.size", len(self.search_sizes), lambda i=i: self._size_index(i),
                                lambda v, i=i: self.size_logit.data[i].fill_(_size_logit(self.search_sizes[v]))))
        if self.count == 2:
            found.append(Choice("swap", 2, lambda: int(self.swapped), self._set_swapped))
            if self.palette is not None:
                found.append(Choice("swap_colours", 2, lambda: int(self.colours_swapped), self._set_colours_swapped))
        return found

    def _set_colours_swapped(self, value: int) -> None:
        """Exchange the two shapes' colours (which colour goes with which shape is easy to get backwards)."""
        if value != int(self.colours_swapped):
            self.colour.data.copy_(self.colour.data.flip(0))
            self.colours_swapped.fill_(value)

    def _set_swapped(self, value: int) -> None:
        """Exchange the two shapes' places (a relation such as "above" may need both to move at once)."""
        if value != int(self.swapped):
            self.position.data.copy_(self.position.data.flip(0))
            self.swapped.fill_(value)

    def _colour_or_hidden_choice(self, index: int) -> Choice:
        colour = _logit_choice(f"shape{index}.colour", self.colour.data[index])
        hidden = colour.options

        def get() -> int:
            return colour.get() if self.opacity.data[index] > 0 else hidden

        def set_option(value: int) -> None:
            self.opacity.data[index].fill_(-2.0 if value == hidden else 2.0)
            if value != hidden:
                colour.set(value)

        def allowed(value: int) -> bool:
            return not self.distinct or value == hidden or value not in self._used_colours(besides=index)

        def cost(value: int) -> float:
            return 0.0 if value == hidden else self.shape_cost

        return Choice(colour.name, hidden + 1, get, set_option, allowed, cost)

    def _used_colours(self, besides: int | None = None) -> set[int]:
        """Palette indices taken by the drawn shapes (other than ``besides``) and, for shapes, the background."""
        if not self.distinct:
            return set()
        used = {int(self.colour.data[i].argmax()) for i in range(self.count)
                if i != besides and self.opacity.data[i] > 0}
        if besides is not None:
            used.add(int(self.background.data.argmax()))
        return used

    def _grid_index(self, index: int) -> int:
        x, y = torch.sigmoid(self.position.data[index]).tolist()
        nearest = [min(range(len(self.grid)), key=lambda k: abs(self.grid[k] - v)) for v in (x, y)]
        return nearest[1] * len(self.grid) + nearest[0]

    def _set_grid(self, index: int, value: int) -> None:
        row, col = divmod(value, len(self.grid))
        self.position.data[index] = _logit(torch.tensor([self.grid[col], self.grid[row]]))

    def _size_index(self, index: int) -> int:
        size = MIN_SIZE + (MAX_SIZE - MIN_SIZE) * float(torch.sigmoid(self.size_logit.data[index]))
        return min(range(len(self.search_sizes)), key=lambda k: abs(self.search_sizes[k] - size))

    def alphas(self) -> torch.Tensor:
        """Whether each primitive is drawn (:func:`_hard_alphas`)."""
        return _hard_alphas(self.opacity)

    def colours(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Background (3,) and primitive (count, 3) colours in [0, 1]."""
        return self._colours(self.background, self.colour)

    def _colours(self, background: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Background and primitive colours in [0, 1] of the background and colour parameters (any leading batch
        dimensions)."""
        if self.palette is None:
            return torch.sigmoid(background), torch.sigmoid(colour)
        return self.choice(background) @ self.palette, self.choice(colour) @ self.palette

    def coverage(self, index: int) -> torch.Tensor:
        """Soft coverage in [0, 1] of primitive ``index``, (H, W)."""
        return self._coverage(torch.sigmoid(self.position[index]), self.sizes()[index], self.shape_weights()[index])

    def _coverage(self, centre: torch.Tensor, size: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Soft coverage in [0, 1] of shapes centred at ``centre`` (..., 2), of bounding-box side ``size`` (...)
        and shape-type weights ``weights`` (..., types): (..., H, W). A hard choice weighs the types not chosen
        exactly 0, so their terms add nothing."""
        # Work in pixels of the short side so the edge width is in pixels.
        scale = min(self.width, self.height)
        dx = (self.grid_x - centre[..., 0, None, None]) * self.width / scale
        dy = (self.grid_y - centre[..., 1, None, None]) * self.height / scale
        size = size[..., None, None]
        sdf = sum(weights[..., kind, None, None] * sdf_fn(dx, dy, size) for kind, sdf_fn in enumerate(SDFS))
        return torch.sigmoid(-sdf * scale / self.edge)

    # The parameters an image is drawn from, in the order :meth:`_draw` takes them.
    _DRAWN_FROM = ("background", "colour", "position", "size_logit", "opacity", "shape_logits")

    def render_options(self, choice: Choice, options: list[int]) -> torch.Tensor:
        """Every option's image in one batched draw (the search's judgement, without gradients): each option's
        parameters are copied as it is set, then :meth:`_draw` renders them all. The same images as ``forward()``
        one option at a time (a hard choice weighs the shapes not chosen exactly 0, as a hidden shape's alpha
        is), for one draw's small operations instead of one per option."""
        if torch.is_grad_enabled():
            return super().render_options(choice, options)
        params = [getattr(self, name) for name in self._DRAWN_FROM]
        states = []
        for option in options:
            choice.set(option)
            states.append(torch.cat([p.reshape(-1) for p in params]))
        stacked = torch.stack(states).split([p.numel() for p in params], dim=1)
        return self._draw(*(state.reshape(len(options), *p.shape) for state, p in zip(stacked, params)))

    def _draw(self, background: torch.Tensor, colour: torch.Tensor, position: torch.Tensor, size_logit: torch.Tensor,
              opacity: torch.Tensor, shape_logits: torch.Tensor) -> torch.Tensor:
        """``forward()``'s image for a batch of parameter states (each parameter with a leading batch dimension):
        (N, 3, H, W)."""
        n = background.shape[0]
        background_rgb, colours = self._colours(background, colour)
        alphas = _hard_alphas(opacity)
        coverage = self._coverage(torch.sigmoid(position), _sizes(size_logit), self.choice(shape_logits))
        image = background_rgb.view(n, 3, 1, 1).expand(n, 3, self.height, self.width)
        for index in range(self.count):
            a = (alphas[:, index, None, None] * coverage[:, index]).unsqueeze(1)
            image = image * (1 - a) + colours[:, index].view(n, 3, 1, 1) * a
        return image

    def forward(self) -> torch.Tensor:
        background, colours = self.colours()
        image = background.view(1, 3, 1, 1).expand(1, 3, self.height, self.width)
        alphas = self.alphas()
        for index in range(self.count):
            if not torch.is_grad_enabled() and alphas[index] == 0:  # a hidden shape, in a search: nothing to draw
                continue
            a = (alphas[index] * self.coverage(index)).view(1, 1, self.height, self.width)
            image = image * (1 - a) + colours[index].view(1, 3, 1, 1) * a
        return image
