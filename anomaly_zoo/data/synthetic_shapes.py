"""Procedural images for the built-in ``synthetic`` dataset: normal renders and defects with exact masks.

Everything here is pure numpy/OpenCV and deterministic given a ``numpy.random.Generator``: no files,
no Lightning. :func:`render` returns the defective image, its mask *and* the defect-free render of
the same random draw, so tests can check that the mask covers exactly the pixels that changed.

Categories (sizes are for the default 128 px and scale with ``size``):

textures — a stationary pattern filling the frame; defects may appear anywhere (away from the border)
    ``stripes``  soft diagonal stripes, two jittered colours, random phase, period 9–11 px, angle ±6°.
    ``grid``     a woven wire mesh: jittered spacing/offset/thickness and a slight wave, on a plate.
    ``carpet``   red fibrous pile: blurred noise plus vertical fibres, colour jitter.
objects — one item on a background; defects lie on the item
    ``pill``     a white capsule-shaped tablet with a score line and a few red speckles, position
                 ±4 px, rotation ±12°, size and colour jitter.
    ``assembly`` a green board with four components (red disc, blue square, yellow triangle, purple
                 hexagon) on four solder-pad sockets in a fixed 2×2 layout; board position ±4 px,
                 rotation ±4°, every component ±1.5 px / ±8°.

Defect kinds:
    ``scratch``        a thin (2 px), 28–50 px long curved line, light on dark material and dark on light
                       material, at 60–100 % strength.
    ``hole``           an irregular dark blob (radius 4–8 px), darkest at its centre.
    ``stain``          an irregular, semi-transparent (50–85 %) colour blob (radius 6–11 px) in a colour
                       the category never shows.
    ``missing_part``   (assembly, logical) one component is absent, so its socket's pads show; the
                       mask is the absent component's footprint.
    ``misplaced_part`` (assembly, logical) one component sits near the board centre instead of on its
                       socket; the mask is the union of its proper and its actual footprint.

Every image, normal or not, has sensor noise (σ = 4 grey levels) and a global gain jitter, so normal
images are never identical. The mask of a defect is the set of pixels the defect painted (for the
logical ones: the footprints), hence it contains every pixel that differs from the clean render.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

#: Bumped whenever the images a given seed produces change (it is part of the cache key).
GENERATOR_VERSION = 1

TEXTURES: tuple[str, ...] = ("stripes", "grid", "carpet")
OBJECTS: tuple[str, ...] = ("pill", "assembly")
CATEGORIES: tuple[str, ...] = TEXTURES + OBJECTS

DEFECTS: dict[str, tuple[str, ...]] = {
    "stripes": ("scratch", "hole", "stain"),
    "grid": ("scratch", "hole", "stain"),
    "carpet": ("scratch", "hole", "stain"),
    "pill": ("scratch", "hole", "stain"),
    "assembly": ("missing_part", "misplaced_part", "scratch"),
}
LOGICAL_DEFECTS: frozenset[str] = frozenset({"missing_part", "misplaced_part"})

# Colours a category never shows, so a stain is a visible change of colour.
_STAIN_COLOURS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "stripes": ((170, 40, 150), (40, 150, 60)),
    "grid": ((150, 85, 25), (190, 50, 40)),
    "carpet": ((40, 110, 200), (200, 190, 70)),
    "pill": ((150, 95, 25), (50, 80, 185)),
    "assembly": ((150, 85, 25), (60, 90, 190)),
}

_SHIFT = 4  # OpenCV fixed-point bits: polygons are drawn with 1/16 px precision
_NOISE_SIGMA = 4.0
_MIN_DEFECT_AREA = 6  # pixels at 128 px; scaled with the area


@dataclass(frozen=True)
class Rendered:
    """One generated sample: ``image`` (H, W, 3) uint8, ``mask`` (H, W) bool, and the defect-free ``clean``."""

    image: np.ndarray
    mask: np.ndarray
    clean: np.ndarray
    category: str
    defect: str


def sample_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of how many images the other splits/categories have."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def render(category: str, defect: str, size: int, rng: np.random.Generator) -> Rendered:
    """Render one ``category`` image of ``size``×``size`` pixels with ``defect`` (``"good"`` for none)."""
    if category not in CATEGORIES:
        raise ValueError(f"Unknown synthetic category '{category}'; choose from {', '.join(CATEGORIES)}.")
    if defect != "good" and defect not in DEFECTS[category]:
        raise ValueError(
            f"Category '{category}' has no defect '{defect}'; its defects are {', '.join(DEFECTS[category])}."
        )
    scene = _SCENES[category](size, rng)
    clean = scene.draw()
    if defect == "good":
        image, mask = clean, np.zeros((size, size), dtype=bool)
    elif defect in LOGICAL_DEFECTS:
        image, mask = _logical_defect(scene, defect, rng)
    else:
        image, mask = _surface_defect(category, defect, clean, scene.support, size, rng)
    return Rendered(_to_uint8(image), mask, _to_uint8(clean), category, defect)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---- small drawing helpers ----------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")


def _coverage(polygons: list[np.ndarray], size: int, antialias: bool = True) -> np.ndarray:
    """Float coverage in [0, 1] of filled polygons given as (N, 2) float (x, y) arrays."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    pts = [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA if antialias else cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(np.float32) / 255.0


def _composite(image: np.ndarray, coverage: np.ndarray, colour: np.ndarray | tuple) -> None:
    """In place: ``image = image·(1-a) + colour·a``; ``colour`` is (3,) or (H, W, 3)."""
    rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # only where a > 0: much faster
    colour = np.asarray(colour, dtype=np.float32)
    alpha = coverage[box][..., None]
    image[box] = image[box] * (1.0 - alpha) + alpha * (colour[box] if colour.ndim == 3 else colour)


def _polygon(kind: str, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Regular shapes as (N, 2) (x, y) vertices: ``disc`` (a 48-gon), ``square``, ``triangle``, ``hexagon``."""
    sides = {"disc": 48, "square": 4, "triangle": 3, "hexagon": 6}[kind]
    t = angle + np.arange(sides) * 2 * np.pi / sides + (np.pi / 4 if kind == "square" else 0.0)
    if kind == "triangle":
        t = t - np.pi / 2
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _rect(centre: np.ndarray, half_w: float, half_h: float, angle: float) -> np.ndarray:
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    return centre + corners @ _rotation(angle).T


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global gain jitter and sensor noise: part of the clean render, shared with its defective copy."""
    image *= rng.uniform(0.93, 1.07)
    image += rng.normal(0.0, _NOISE_SIGMA, size=image.shape).astype(np.float32)
    return image


def _jitter(colour: tuple, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, size=3).astype(np.float32)


# ---- scenes: the defect-free renders ------------------------------------------------------------------


class _Scene:
    """A sampled normal image. ``draw()`` is deterministic; ``support`` is where surface defects may go."""

    support: np.ndarray

    def draw(self) -> np.ndarray:
        raise NotImplementedError


class _Texture(_Scene):
    def __init__(self, image: np.ndarray, size: int) -> None:
        self.image = image
        margin = max(2, round(size * 0.08))
        self.support = np.zeros((size, size), dtype=bool)
        self.support[margin:-margin, margin:-margin] = True

    def draw(self) -> np.ndarray:
        return self.image.copy()


def _stripes(size: int, rng: np.random.Generator) -> _Scene:
    y, x = _grid(size)
    scale = size / 128
    angle = np.deg2rad(35 + rng.uniform(-6, 6))
    period = rng.uniform(9, 11) * scale
    phase = rng.uniform(0, 2 * np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    profile = 0.5 + 0.5 * np.tanh(2.5 * np.sin(2 * np.pi * u / period + phase))
    light, dark = _jitter((205, 175, 70), rng, 12), _jitter((55, 65, 135), rng, 12)
    image = dark + profile[..., None] * (light - dark)
    shade = 1 + 0.05 * (x / size - 0.5) * rng.uniform(-1, 1) + 0.05 * (y / size - 0.5) * rng.uniform(-1, 1)
    return _Texture(_finish(image * shade[..., None], rng), size)


def _mesh(size: int, rng: np.random.Generator) -> _Scene:
    y, x = _grid(size)
    scale = size / 128
    spacing = rng.uniform(13.5, 14.5) * scale
    half = rng.uniform(1.0, 1.3) * scale
    wave = rng.uniform(0.4, 0.9) * scale
    ox, oy = rng.uniform(0, spacing, size=2)
    xs = x + wave * np.sin(2 * np.pi * y / (2 * spacing))
    ys = y + wave * np.sin(2 * np.pi * x / (2 * spacing))
    dx = np.abs((xs - ox + spacing / 2) % spacing - spacing / 2)
    dy = np.abs((ys - oy + spacing / 2) % spacing - spacing / 2)
    wire = np.clip(half + 0.5 - np.minimum(dx, dy), 0, 1)
    plate, metal = _jitter((175, 175, 168), rng, 10), _jitter((70, 78, 88), rng, 8)
    # Wires are brighter on top (a cylindrical highlight) — texture a random CNN can see.
    highlight = np.clip(1 - np.minimum(dx, dy) / max(half, 1e-3), 0, 1)[..., None] * 25
    image = plate + wire[..., None] * (metal + highlight - plate)
    return _Texture(_finish(image, rng), size)


def _carpet(size: int, rng: np.random.Generator) -> _Scene:
    scale = size / 128
    blotch = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), 1.6 * scale)
    fibres = cv2.GaussianBlur(
        rng.normal(size=(size, size)).astype(np.float32), (0, 0), sigmaX=0.5 * scale, sigmaY=2.5 * scale
    )
    value = blotch / (blotch.std() + 1e-6) + 0.8 * fibres / (fibres.std() + 1e-6)
    value = np.clip(0.5 + 0.16 * value, 0, 1)
    light, dark = _jitter((170, 70, 55), rng, 10), _jitter((95, 30, 30), rng, 8)
    image = dark + value[..., None] * (light - dark)
    return _Texture(_finish(image, rng), size)


class _Pill(_Scene):
    def __init__(self, size: int, rng: np.random.Generator) -> None:
        scale = size / 128
        self.size = size
        self.background = _jitter((45, 50, 58), rng, 6)
        self.centre = size / 2 + rng.uniform(-4, 4, size=2) * scale
        self.angle = np.deg2rad(rng.uniform(-12, 12))
        self.half_len = rng.uniform(37, 41) * scale  # half length incl. caps
        self.radius = rng.uniform(18, 21) * scale
        self.colour = _jitter((232, 228, 218), rng, 8)
        n_speckles = int(rng.integers(3, 10))
        # Speckles in pill coordinates (u along the axis, v across), inside the body.
        self.speckles = np.stack(
            [
                rng.uniform(-0.85, 0.85, n_speckles) * (self.half_len - self.radius * 0.4),
                rng.uniform(-0.6, 0.6, n_speckles) * self.radius,
                rng.uniform(0.8, 1.3, n_speckles) * scale,
            ],
            axis=1,
        )
        self.speckle_colour = _jitter((185, 70, 55), rng, 10)
        self.body = self._body_polygon()
        support = _coverage([self.body], size, antialias=False) > 0
        erode = max(1, round(3 * scale))
        self.support = cv2.erode(support.astype(np.uint8), np.ones((2 * erode + 1,) * 2, np.uint8)) > 0
        self.noise_seed = int(rng.integers(2**31))

    def _body_polygon(self) -> np.ndarray:
        straight = self.half_len - self.radius
        t = np.linspace(-np.pi / 2, np.pi / 2, 24)
        right = np.stack([straight + self.radius * np.cos(t), self.radius * np.sin(t)], axis=1)
        left = np.stack([-straight - self.radius * np.cos(t), -self.radius * np.sin(t)], axis=1)
        local = np.concatenate([right, left])
        return self.centre + local @ _rotation(self.angle).T

    def draw(self) -> np.ndarray:
        size, scale = self.size, self.size / 128
        y, x = _grid(size)
        image = np.broadcast_to(self.background, (size, size, 3)).astype(np.float32)
        # Soft shadow below-right of the pill.
        shadow = _coverage([self.body + np.array([2.5, 3.0]) * scale], size)
        shadow = cv2.GaussianBlur(shadow, (0, 0), 2.0 * scale)
        image *= (1 - 0.45 * shadow)[..., None]
        # Shading: darker towards the rim (in pill coordinates).
        rot = _rotation(-self.angle)
        u = rot[0, 0] * (x - self.centre[0]) + rot[0, 1] * (y - self.centre[1])
        v = rot[1, 0] * (x - self.centre[0]) + rot[1, 1] * (y - self.centre[1])
        straight = self.half_len - self.radius
        rim = np.hypot(np.clip(np.abs(u) - straight, 0, None), v) / self.radius
        shade = (1 - 0.22 * np.clip(rim, 0, 1) ** 3)[..., None]
        body = _coverage([self.body], size)
        _composite(image, body, self.colour * shade)
        # Score line across the middle.
        line = _rect(self.centre, 0.6 * scale, self.radius * 0.8, self.angle)
        _composite(image, _coverage([line], size) * body * 0.35, (120, 118, 112))
        for su, sv, sr in self.speckles:
            centre = self.centre + _rotation(self.angle) @ np.array([su, sv])
            _composite(
                image, _coverage([_polygon("disc", centre, sr, 0.0)], size) * 0.85, self.speckle_colour
            )
        return _finish(image, np.random.default_rng(self.noise_seed))


@dataclass
class _Part:
    kind: str
    centre: np.ndarray
    radius: float
    angle: float
    colour: np.ndarray


class _Assembly(_Scene):
    KINDS = ("disc", "square", "triangle", "hexagon")
    COLOURS = ((200, 50, 45), (50, 80, 190), (225, 195, 40), (140, 70, 170))
    RADII = (10.5, 12.5, 13.0, 11.5)

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        scale = self.scale = size / 128
        self.size = size
        self.background = _jitter((80, 80, 86), rng, 6)
        self.board_colour = _jitter((45, 115, 65), rng, 8)
        self.centre = size / 2 + rng.uniform(-4, 4, size=2) * scale
        self.angle = np.deg2rad(rng.uniform(-4, 4))
        self.half = 46 * scale
        rot = _rotation(self.angle)
        offsets = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * 23 * scale
        self.sockets = [self.centre + rot @ o for o in offsets]
        self.parts = [
            _Part(
                kind,
                socket + rng.uniform(-1.5, 1.5, size=2) * scale,
                radius * scale * rng.uniform(0.97, 1.03),
                self.angle + np.deg2rad(rng.uniform(-8, 8)),
                _jitter(colour, rng, 10),
            )
            for kind, socket, colour, radius in zip(self.KINDS, self.sockets, self.COLOURS, self.RADII)
        ]
        board = _coverage([_rect(self.centre, self.half, self.half, self.angle)], size, antialias=False) > 0
        parts = _coverage([self._outline(p) for p in self.parts], size, antialias=False) > 0
        erode = max(1, round(3 * scale))
        self.support = (
            cv2.erode((board & ~parts).astype(np.uint8), np.ones((2 * erode + 1,) * 2, np.uint8)) > 0
        )
        self.noise_seed = int(rng.integers(2**31))

    def _outline(self, part: _Part) -> np.ndarray:
        return _polygon(part.kind, part.centre, part.radius, part.angle)

    def footprint(self, part: _Part) -> np.ndarray:
        """Every pixel the part's drawing touches (its anti-aliased coverage plus its shadow)."""
        cover = _coverage([self._outline(part)], self.size) > 0
        shadow = self._shadow(part) > 0
        return cover | shadow

    def _shadow(self, part: _Part) -> np.ndarray:
        offset = np.array([1.5, 2.0]) * self.scale
        return _coverage([self._outline(part) + offset], self.size) * 0.4

    def draw(self, parts: list[_Part] | None = None) -> np.ndarray:
        size, scale = self.size, self.scale
        parts = self.parts if parts is None else parts
        image = np.broadcast_to(self.background, (size, size, 3)).astype(np.float32)
        _composite(
            image, _coverage([_rect(self.centre, self.half, self.half, self.angle)], size), self.board_colour
        )
        rot = _rotation(self.angle)
        for corner in np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * (self.half - 6 * scale):
            hole = _polygon("disc", self.centre + rot @ corner, 3.2 * scale, 0.0)
            _composite(image, _coverage([hole], size), (25, 30, 28))
        # Solder pads of every socket: hidden under a correctly placed part.
        pad_colour = (205, 190, 140)
        for socket in self.sockets:
            pads = [
                _rect(socket + rot @ np.array([dx, 0.0]) * scale, 2.6 * scale, 4.2 * scale, self.angle)
                for dx in (-5, 5)
            ]
            _composite(image, _coverage(pads, size), pad_colour)
        y, x = _grid(size)
        for part in parts:
            image *= (1 - self._shadow(part))[..., None]
            # A soft top-left light on every part.
            light = 1 + 0.12 * ((part.centre[0] - x) + (part.centre[1] - y)) / (2 * part.radius)
            _composite(image, _coverage([self._outline(part)], size), part.colour * light[..., None])
        return _finish(image, np.random.default_rng(self.noise_seed))


_SCENES = {"stripes": _stripes, "grid": _mesh, "carpet": _carpet, "pill": _Pill, "assembly": _Assembly}


# ---- defects -------------------------------------------------------------------------------------------


def _pick_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    return np.array([xs[i] + rng.uniform(0, 1), ys[i] + rng.uniform(0, 1)])


def _blob(centre: np.ndarray, radius: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular closed shape: a circle whose radius wobbles with a few random harmonics."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, 0.35 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = radius * r / r.max()
    stretch = rng.uniform(0.7, 1.0)
    local = np.stack([r * np.cos(t), stretch * r * np.sin(t)], axis=1)
    points = centre + local @ _rotation(rng.uniform(0, np.pi)).T
    return _coverage([points], size, antialias=False) > 0


def _scratch(centre: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    scale = size / 128
    length = rng.uniform(28, 50) * scale
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.2, 0.2) * length
    t = np.linspace(-0.5, 0.5, 32)[:, None]
    points = centre + t * length * direction + (1 - 4 * t**2) * bend * normal
    canvas = np.zeros((size, size), dtype=np.uint8)
    thickness = max(1, round(2 * scale))
    pts = np.round(points * (1 << _SHIFT)).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 1, thickness=thickness, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas > 0


def _surface_defect(
    category: str, defect: str, clean: np.ndarray, support: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 128
    min_area = max(3, round(_MIN_DEFECT_AREA * scale**2))
    # Centres keep some distance from the support's edge so blobs are rarely cut off.
    inner = cv2.erode(support.astype(np.uint8), np.ones((2 * round(5 * scale) + 1,) * 2, np.uint8)) > 0
    region = inner if inner.any() else support
    for _ in range(100):
        centre = _pick_point(region, rng)
        if defect == "scratch":
            mask = _scratch(centre, rng, size)
        elif defect == "hole":
            mask = _blob(centre, rng.uniform(4.0, 8.0) * scale, rng, size)
        else:
            mask = _blob(centre, rng.uniform(6.0, 11.0) * scale, rng, size)
        mask &= support
        if mask.sum() >= min_area:
            break
    else:  # pragma: no cover - the support regions are large; this cannot happen for sane sizes
        raise RuntimeError(f"Could not place a {defect} on a {size}px {category} image.")

    image = clean.copy()
    n = int(mask.sum())
    noise = rng.normal(0.0, _NOISE_SIGMA, size=(n, 3)).astype(np.float32)
    if defect == "scratch":
        luminance = clean[mask].mean()
        value = rng.uniform(215, 240) if luminance < 130 else rng.uniform(20, 45)
        strength = rng.uniform(0.6, 1.0)  # some scratches are fainter than others
        image[mask] = (1 - strength) * clean[mask] + strength * value + noise
    elif defect == "hole":
        ys, xs = np.nonzero(mask)
        d = np.hypot(xs + 0.5 - centre[0], ys + 0.5 - centre[1])
        depth = (d / (d.max() + 1e-6))[:, None]  # 0 at the centre, 1 at the rim
        tint = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
        image[mask] = (8 + 30 * depth) * tint + noise
    else:
        colour = np.asarray(_STAIN_COLOURS[category][int(rng.integers(len(_STAIN_COLOURS[category])))])
        colour = colour + rng.uniform(-12, 12, size=3)
        alpha = rng.uniform(0.5, 0.85) + rng.uniform(-0.08, 0.08, size=(n, 1))
        image[mask] = (1 - alpha) * clean[mask] + alpha * colour + noise
    return image, mask


def _logical_defect(scene: _Scene, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    assert isinstance(scene, _Assembly)
    k = int(rng.integers(len(scene.parts)))
    part = scene.parts[k]
    others = [p for i, p in enumerate(scene.parts) if i != k]
    if defect == "missing_part":
        return scene.draw(others), scene.footprint(part)
    # Misplaced: the part lies near the board centre (between the sockets), turned at random.
    scale = scene.scale
    moved = _Part(
        part.kind,
        scene.centre + rng.uniform(-5, 5, size=2) * scale,
        part.radius,
        part.angle + np.deg2rad(rng.uniform(15, 45) * rng.choice([-1, 1])),
        part.colour,
    )
    return scene.draw(others + [moved]), scene.footprint(part) | scene.footprint(moved)
