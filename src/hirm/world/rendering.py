"""Procedural renderer of the MiniCanvas world: object silhouettes painted by style rules.

An *object* is a silhouette made of primitives (ellipses, convex polygons, thick segments) in a
canonical frame ``[-1, 1]^2`` (y points down). Each render draws it with a random position, scale,
rotation, mirror and per-primitive jitter, rasterised with 4x4 supersampling into a soft mask.
A *style* turns that mask into an RGB image: background, fill, outline, texture and noise.

Everything is numpy and deterministic in ``(style, object, seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .concepts import OBJECTS, STYLES, canonical_name

SUPERSAMPLE = 4
Prim = (
    tuple  # ("ellipse", cx, cy, a, b, angle) | ("poly", [(x, y), ...]) | ("seg", x0, y0, x1, y1, half_width)
)


# ----------------------------------------------------------------------------- silhouettes
def _petals(cx: float, cy: float, r: float, n: int) -> list[Prim]:
    return [
        (
            "ellipse",
            cx + r * np.cos(2 * np.pi * k / n),
            cy + r * np.sin(2 * np.pi * k / n),
            0.2,
            0.11,
            2 * np.pi * k / n,
        )
        for k in range(n)
    ]


def _box(x0: float, y0: float, x1: float, y1: float) -> Prim:
    """Axis-aligned rectangle as a polygon."""
    return ("poly", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _mirrored(prims: list[Prim]) -> list[Prim]:
    """``prims`` followed by their mirror images in x (segments and polygons only)."""
    out = list(prims)
    for p in prims:
        if p[0] == "seg":
            out.append(("seg", -p[1], p[2], -p[3], p[4], p[5]))
        else:
            out.append(("poly", [(-x, y) for x, y in p[1]]))
    return out


_SHAPES_V1: dict[str, list[Prim]] = {  # the first world's 10 objects (unchanged)
    "Birds": [
        ("ellipse", -0.05, 0.15, 0.5, 0.27, -0.15),
        ("ellipse", 0.45, -0.2, 0.2, 0.2, 0.0),
        ("poly", [(0.6, -0.28), (0.9, -0.18), (0.6, -0.1)]),
        ("poly", [(-0.25, 0.05), (0.2, 0.0), (-0.35, -0.7)]),
        ("poly", [(-0.45, 0.1), (-0.9, -0.1), (-0.85, 0.35)]),
    ],
    "Cats": [
        ("ellipse", 0.0, 0.4, 0.42, 0.42, 0.0),
        ("ellipse", 0.0, -0.32, 0.3, 0.27, 0.0),
        ("poly", [(-0.3, -0.42), (-0.06, -0.55), (-0.26, -0.88)]),
        ("poly", [(0.3, -0.42), (0.06, -0.55), (0.26, -0.88)]),
        ("seg", 0.35, 0.7, 0.75, 0.05, 0.09),
    ],
    "Fishes": [
        ("ellipse", -0.15, 0.0, 0.6, 0.33, 0.0),
        ("poly", [(0.35, 0.0), (0.9, -0.42), (0.9, 0.42)]),
        ("poly", [(-0.35, -0.25), (0.1, -0.25), (-0.05, -0.55)]),
    ],
    "Trees": [
        ("poly", [(-0.65, 0.45), (0.65, 0.45), (0.0, -0.15)]),
        ("poly", [(-0.5, 0.1), (0.5, 0.1), (0.0, -0.55)]),
        ("poly", [(-0.35, -0.3), (0.35, -0.3), (0.0, -0.92)]),
        ("poly", [(-0.11, 0.4), (0.11, 0.4), (0.11, 0.9), (-0.11, 0.9)]),
    ],
    "Towers": [
        ("poly", [(-0.27, -0.45), (0.27, -0.45), (0.27, 0.92), (-0.27, 0.92)]),
        ("poly", [(-0.4, -0.62), (0.4, -0.62), (0.4, -0.42), (-0.4, -0.42)]),
        ("poly", [(-0.4, -0.85), (-0.22, -0.85), (-0.22, -0.6), (-0.4, -0.6)]),
        ("poly", [(-0.09, -0.85), (0.09, -0.85), (0.09, -0.6), (-0.09, -0.6)]),
        ("poly", [(0.22, -0.85), (0.4, -0.85), (0.4, -0.6), (0.22, -0.6)]),
    ],
    "Flowers": [
        ("seg", 0.0, -0.2, 0.0, 0.95, 0.07),
        ("ellipse", 0.22, 0.45, 0.22, 0.09, -0.6),
        ("ellipse", 0.0, -0.4, 0.16, 0.16, 0.0),
        *_petals(0.0, -0.4, 0.3, 6),
    ],
    "Butterfly": [
        ("ellipse", -0.42, -0.3, 0.42, 0.3, 0.5),
        ("ellipse", 0.42, -0.3, 0.42, 0.3, -0.5),
        ("ellipse", -0.3, 0.35, 0.28, 0.22, -0.5),
        ("ellipse", 0.3, 0.35, 0.28, 0.22, 0.5),
        ("ellipse", 0.0, 0.0, 0.08, 0.55, 0.0),
        ("seg", 0.0, -0.5, -0.25, -0.9, 0.05),
        ("seg", 0.0, -0.5, 0.25, -0.9, 0.05),
    ],
    "Rabbits": [
        ("ellipse", 0.15, 0.45, 0.45, 0.35, 0.0),
        ("ellipse", -0.3, 0.0, 0.25, 0.23, 0.0),
        ("ellipse", -0.42, -0.55, 0.09, 0.36, -0.15),
        ("ellipse", -0.17, -0.55, 0.09, 0.36, 0.2),
        ("ellipse", 0.62, 0.35, 0.12, 0.12, 0.0),
    ],
    "Jellyfish": [
        ("ellipse", 0.0, -0.25, 0.6, 0.5, 0.0, "top"),
        ("seg", -0.4, -0.25, -0.5, 0.3, 0.07),
        ("seg", -0.5, 0.3, -0.35, 0.85, 0.07),
        ("seg", -0.13, -0.25, -0.2, 0.35, 0.07),
        ("seg", -0.2, 0.35, -0.08, 0.92, 0.07),
        ("seg", 0.13, -0.25, 0.2, 0.35, 0.07),
        ("seg", 0.2, 0.35, 0.08, 0.92, 0.07),
        ("seg", 0.4, -0.25, 0.5, 0.3, 0.07),
        ("seg", 0.5, 0.3, 0.35, 0.85, 0.07),
    ],
    "Horses": [
        ("ellipse", -0.05, 0.0, 0.5, 0.22, 0.0),
        ("seg", 0.35, -0.05, 0.55, -0.5, 0.12),
        ("ellipse", 0.7, -0.5, 0.22, 0.1, 0.5),
        ("seg", -0.42, 0.1, -0.45, 0.85, 0.07),
        ("seg", -0.22, 0.1, -0.2, 0.85, 0.07),
        ("seg", 0.15, 0.1, 0.12, 0.85, 0.07),
        ("seg", 0.35, 0.1, 0.38, 0.85, 0.07),
        ("seg", -0.5, -0.05, -0.8, 0.45, 0.07),
    ],
}


_SHAPES_V2: dict[str, list[Prim]] = {  # added in MiniCanvas 2 (UnlearnCanvas's other 10 objects)
    "Architectures": [  # a house: wide body, triangular roof, chimney
        _box(-0.6, 0.0, 0.6, 0.85),
        ("poly", [(-0.82, 0.05), (0.82, 0.05), (0.0, -0.65)]),
        _box(0.3, -0.62, 0.5, -0.15),
    ],
    "Bears": [  # side view: bulky body with a hump, low head, round ears, muzzle, two thick legs
        ("ellipse", 0.1, 0.05, 0.62, 0.4, 0.0),
        ("ellipse", -0.05, -0.15, 0.35, 0.3, 0.0),
        ("ellipse", -0.6, -0.05, 0.28, 0.26, 0.0),
        ("ellipse", -0.86, 0.04, 0.14, 0.1, 0.0),
        ("ellipse", -0.74, -0.33, 0.11, 0.11, 0.0),
        ("ellipse", -0.46, -0.36, 0.11, 0.11, 0.0),
        _box(-0.45, 0.2, -0.2, 0.78),
        _box(0.35, 0.2, 0.6, 0.78),
    ],
    "Dogs": [  # side view: body, head with snout and hanging ear, four short legs, raised tail
        ("ellipse", 0.05, 0.05, 0.5, 0.2, 0.0),
        ("seg", -0.35, -0.02, -0.5, -0.3, 0.1),
        ("ellipse", -0.55, -0.38, 0.2, 0.18, 0.0),
        ("ellipse", -0.78, -0.32, 0.16, 0.08, 0.1),
        ("ellipse", -0.43, -0.22, 0.07, 0.18, -0.3),
        ("seg", -0.35, 0.15, -0.37, 0.55, 0.07),
        ("seg", -0.18, 0.15, -0.16, 0.55, 0.07),
        ("seg", 0.25, 0.15, 0.23, 0.55, 0.07),
        ("seg", 0.42, 0.15, 0.44, 0.55, 0.07),
        ("seg", 0.5, -0.05, 0.72, -0.55, 0.06),
    ],
    "Flame": [  # teardrop: round base tapering to one tall leaning tip, a small tongue on each side
        ("ellipse", 0.0, 0.5, 0.48, 0.42, 0.0),
        ("poly", [(-0.47, 0.5), (0.47, 0.5), (0.3, -0.2), (0.02, -0.55), (-0.3, -0.1)]),
        ("poly", [(0.02, -0.5), (0.3, -0.15), (0.28, -0.98)]),
        ("poly", [(-0.46, 0.5), (-0.3, 0.05), (-0.7, -0.15)]),
        ("poly", [(0.46, 0.55), (0.38, 0.15), (0.7, 0.1)]),
    ],
    "Frogs": [  # top view: body, head, two eye bumps, splayed bent legs
        ("ellipse", 0.0, 0.15, 0.33, 0.42, 0.0),
        ("ellipse", 0.0, -0.3, 0.3, 0.22, 0.0),
        ("ellipse", -0.22, -0.45, 0.12, 0.12, 0.0),
        ("ellipse", 0.22, -0.45, 0.12, 0.12, 0.0),
        *_mirrored(
            [
                ("seg", -0.25, -0.1, -0.6, -0.2, 0.07),
                ("seg", -0.6, -0.2, -0.65, -0.55, 0.07),
                ("seg", -0.25, 0.4, -0.75, 0.25, 0.08),
                ("seg", -0.75, 0.25, -0.65, 0.85, 0.08),
            ]
        ),
    ],
    "Human": [  # standing figure: head, torso, arms, legs
        ("ellipse", 0.0, -0.72, 0.17, 0.17, 0.0),
        _box(-0.2, -0.5, 0.2, 0.2),
        *_mirrored([("seg", -0.2, -0.45, -0.5, 0.1, 0.07), ("seg", -0.1, 0.2, -0.22, 0.92, 0.08)]),
    ],
    "Sandwiches": [  # stacked layers: domed top bread, wider filling, bottom bread
        ("ellipse", 0.0, -0.2, 0.72, 0.38, 0.0, "top"),
        _box(-0.72, -0.2, 0.72, -0.08),
        _box(-0.86, 0.06, 0.86, 0.22),
        _box(-0.72, 0.36, 0.72, 0.58),
    ],
    "Sea": [  # a band of water wider than the canvas, with a row of leaning wave crests
        _box(-3.0, 0.0, 3.0, 0.55),
        _box(-3.0, 0.75, 3.0, 3.0),
        *[("poly", [(x - 0.3, 0.05), (x + 0.12, -0.42), (x + 0.3, 0.05)]) for x in np.arange(-2.4, 2.5, 0.6)],
    ],
    "Statues": [  # a figure on a stepped pedestal, one arm raised straight up, the other held out
        _box(-0.62, 0.8, 0.62, 0.96),
        _box(-0.4, 0.3, 0.4, 0.82),
        _box(-0.52, 0.2, 0.52, 0.32),
        _box(-0.13, -0.45, 0.13, 0.0),
        ("ellipse", 0.0, -0.6, 0.13, 0.13, 0.0),
        ("seg", 0.12, -0.4, 0.2, -0.98, 0.06),
        ("seg", -0.12, -0.38, -0.45, -0.3, 0.06),
        *_mirrored([("seg", -0.07, 0.0, -0.12, 0.22, 0.07)]),
    ],
    "Waterfalls": [  # top ledge between two cliff blocks, two falling streams, a wide pool
        _box(-0.95, -0.85, -0.45, 0.45),
        _box(0.45, -0.6, 0.95, 0.45),
        _box(-0.45, -0.85, 0.45, -0.62),
        ("seg", -0.2, -0.62, -0.2, 0.55, 0.07),
        ("seg", 0.2, -0.62, 0.2, 0.55, 0.07),
        ("ellipse", 0.0, 0.7, 0.95, 0.2, 0.0),
    ],
}

SHAPES: dict[str, list[Prim]] = {o: (_SHAPES_V1 | _SHAPES_V2)[o] for o in OBJECTS}
"""Silhouette of every object in the canonical frame ``[-1, 1]^2`` (the first world's 10 are unchanged)."""


def _prim_mask(p: Prim, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    kind = p[0]
    if kind == "ellipse":
        cx, cy, a, b, ang = p[1:6]
        c, s = np.cos(ang), np.sin(ang)
        du, dv = u - cx, v - cy
        x, y = c * du + s * dv, -s * du + c * dv
        inside = (x / a) ** 2 + (y / b) ** 2 <= 1.0
        if len(p) > 6 and p[6] == "top":
            inside &= v <= cy
        return inside
    if kind == "poly":
        pts = p[1]
        # convex polygon: inside all half-planes (either orientation)
        signs = []
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
            signs.append((x1 - x0) * (v - y0) - (y1 - y0) * (u - x0))
        st = np.stack(signs)
        return np.all(st >= 0, axis=0) | np.all(st <= 0, axis=0)
    if kind == "seg":
        x0, y0, x1, y1, w = p[1:6]
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return (u - x0 - t * dx) ** 2 + (v - y0 - t * dy) ** 2 <= w * w
    raise ValueError(f"unknown primitive {kind!r}")


def _jitter(p: Prim, rng: np.random.Generator, amount: float) -> Prim:
    if p[0] == "ellipse":
        cx, cy, a, b, ang = p[1:6]
        j = rng.uniform(-amount, amount, 5)
        return ("ellipse", cx + j[0], cy + j[1], a * (1 + j[2]), b * (1 + j[3]), ang + 2 * j[4], *p[6:])
    if p[0] == "poly":
        return (
            "poly",
            [(x + rng.uniform(-amount, amount), y + rng.uniform(-amount, amount)) for x, y in p[1]],
        )
    x0, y0, x1, y1, w = p[1:6]
    j = rng.uniform(-amount, amount, 4)
    return ("seg", x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3], w)


def object_mask(obj: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Soft silhouette mask (size, size) in [0, 1] with random pose: scale, position, rotation, mirror, jitter."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    scale = rng.uniform(0.55, 0.85)
    room = 0.95 - scale
    tx, ty = rng.uniform(-room, room, 2)
    ang = np.deg2rad(rng.uniform(-20, 20))
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    c, s = np.cos(ang), np.sin(ang)
    dx, dy = (xx - tx) / scale, (yy - ty) / scale
    u = mirror * (c * dx + s * dy)
    v = -s * dx + c * dy
    mask = np.zeros((n, n), dtype=bool)
    for prim in SHAPES[obj]:
        mask |= _prim_mask(_jitter(prim, rng, 0.05), u, v)
    return mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- image helpers
def _shift_stack(a: np.ndarray, r: int) -> np.ndarray:
    p = np.pad(a, r, mode="edge")
    h, w = a.shape
    return np.stack([p[i : i + h, j : j + w] for i in range(2 * r + 1) for j in range(2 * r + 1)])


def _edge(alpha: np.ndarray, r: int = 1) -> np.ndarray:
    st = _shift_stack(alpha, r)
    return np.clip(st.max(0) - st.min(0), 0.0, 1.0) * np.clip(alpha * 2.0, 0.0, 1.0) ** 0.5


def _ring(alpha: np.ndarray) -> np.ndarray:
    """One-pixel outline just outside the shape (thin parts keep their fill, unlike :func:`_edge`)."""
    return np.clip(_shift_stack(alpha, 1).max(0) - alpha, 0.0, 1.0)


def _blur(a: np.ndarray, r: int = 1) -> np.ndarray:
    return _shift_stack(a, r).mean(0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: bilinear upsampling of a random (cells+1)^2 grid."""
    g = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _col(rgb: Sequence[float], rng: np.random.Generator, jitter: float = 0.04) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-jitter, jitter, 3), 0.0, 1.0)


def _mix(bg: np.ndarray, fg: np.ndarray, a: np.ndarray) -> np.ndarray:
    return bg * (1 - a[..., None]) + fg * a[..., None]


def _flat(c: np.ndarray, size: int) -> np.ndarray:
    return np.broadcast_to(c, (size, size, 3)).copy()


# ----------------------------------------------------------------------------- styles
StyleFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _crayon(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    bg = _flat(_col((0.96, 0.93, 0.8), rng), n) * (1 - 0.05 * rng.random((n, n, 1)))
    rows = 0.7 + 0.3 * rng.random((n, 1, 1))
    fill = _col((0.88, 0.3, 0.12), rng) * rows
    gaps = rng.random((n, n)) < 0.18
    img = _mix(bg, fill, a * ~gaps)
    return _mix(img, _col((0.55, 0.1, 0.05), rng), _edge(a) * 0.8)


def _mosaic(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, t = a.shape[0], 2
    k = n // t
    tiles = a.reshape(k, t, k, t).mean(axis=(1, 3)) > 0.45
    bright = 1 + rng.uniform(-0.18, 0.18, (k, k, 1))
    cols = np.where(tiles[..., None], _col((0.97, 0.75, 0.15), rng), _col((0.1, 0.5, 0.55), rng)) * bright
    img = np.repeat(np.repeat(cols, t, 0), t, 1)
    grout = np.arange(n) % t == t - 1
    img[grout[:, None] & grout[None, :]] = 0.15
    return img


def _neon_lines(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    img = _flat(_col((0.04, 0.02, 0.1), rng, 0.02), n)
    yy, xx = np.mgrid[0:n, 0:n]
    for _ in range(2):
        off, slope = rng.uniform(-n, n), rng.choice([-1.0, 1.0])
        line = np.abs(yy - slope * xx - off) < 0.8
        img = _mix(img, _col((0.1, 0.9, 1.0), rng), line * 0.7)
    img = _mix(img, _col((0.2, 0.0, 0.25), rng), a * 0.8)
    e = _edge(a)
    img = _mix(img, _col((1.0, 0.2, 0.9), rng), np.clip(_blur(e) * 0.9, 0, 1))
    return _mix(img, np.array([1.0, 0.7, 1.0]), e)


def _pastel(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    g = np.linspace(0, 1, n)[:, None, None]
    bg = _col((0.99, 0.84, 0.9), rng) * (1 - g) + _col((0.85, 0.8, 0.98), rng) * g
    bg = np.broadcast_to(bg, (n, n, 3))
    return _mix(bg, _col((0.68, 0.93, 0.8), rng), _blur(a))


def _sketch(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    phase = rng.integers(0, 3)
    hatch = ((xx + yy + phase) % 3 == 0).astype(float)
    paper = 0.96 - 0.04 * rng.random((n, n))
    gray = paper - a * (0.15 + 0.5 * hatch) - _edge(a) * 0.55
    gray = np.clip(gray, 0, 1)
    return np.repeat(gray[..., None], 3, axis=2) * _col((1.0, 1.0, 1.0), rng, 0.02)


def _pop_art(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    dots = ((yy % 4) < 2) & ((xx % 4) < 2)
    bg = np.where(dots[..., None], _col((0.95, 0.15, 0.2), rng), _col((1.0, 0.9, 0.1), rng))
    img = _mix(bg, _col((0.1, 0.3, 0.95), rng), a)
    return _mix(img, np.zeros(3), np.clip(_edge(a) * 1.5, 0, 1))


def _watercolor(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    blot = _smooth_noise(rng, n, 4)[..., None]
    bg = _col((0.96, 0.95, 0.88), rng) * (1 - blot * 0.25) + _col((0.7, 0.85, 0.95), rng) * blot * 0.25
    wash = 0.75 + 0.25 * _smooth_noise(rng, n, 3)[..., None]
    fill = _col((0.35, 0.45, 0.88), rng) * wash + (1 - wash) * 0.9
    return _mix(bg, fill, _blur(_blur(a)) * 0.9)


def _on_fire(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    g = np.linspace(0, 1, n)[:, None, None]
    flicker = 0.85 + 0.15 * rng.random((n, n, 1))
    fill = (_col((0.95, 0.15, 0.0), rng) * (1 - g) + _col((1.0, 0.9, 0.2), rng) * g) * flicker
    bg = _flat(_col((0.16, 0.03, 0.02), rng, 0.02), n)
    glow = np.clip(_blur(_blur(a), 2) * 1.2, 0, 1)
    img = _mix(bg, _col((0.9, 0.35, 0.0), rng), glow * 0.6)
    return _mix(img, np.clip(fill, 0, 1), a)


def _ink_art(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    paper = _flat(_col((0.9, 0.84, 0.7), rng), n) * (1 - 0.06 * _smooth_noise(rng, n, 6)[..., None])
    rough = np.clip(a + rng.uniform(-0.35, 0.35, (n, n)) * _edge(a), 0, 1) > 0.5
    splat = rng.random((n, n)) < 0.012
    ink = _col((0.05, 0.05, 0.07), rng, 0.02)
    return _mix(paper, ink, np.maximum(rough.astype(float), splat))


def _bricks(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    row = yy // 4
    mortar = (yy % 4 == 0) | ((xx + 4 * (row % 2)) % 8 == 0)
    brick_shade = (
        1 + rng.uniform(-0.12, 0.12, (n // 4 + 1, n // 8 + 2))[row, (xx + 4 * (row % 2)) // 8][..., None]
    )
    bg = np.where(
        mortar[..., None], _col((0.85, 0.82, 0.75), rng), _col((0.68, 0.26, 0.16), rng) * brick_shade
    )
    img = _mix(bg, _col((0.5, 0.52, 0.56), rng) * (0.9 + 0.1 * rng.random((n, n, 1))), a)
    return _mix(img, np.zeros(3) + 0.1, _edge(a) * 0.9)


def _winter(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    g = np.linspace(0, 1, n)[:, None, None]
    bg = np.broadcast_to(_col((0.72, 0.85, 1.0), rng) * (1 - g) + _col((0.97, 0.98, 1.0), rng) * g, (n, n, 3))
    img = _mix(bg, _col((0.1, 0.2, 0.48), rng), a)
    snow = rng.random((n, n)) < 0.07
    return _mix(img, np.ones(3), snow * 0.95)


def _rust(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    grain = rng.random((n, n, 1))
    blot = _smooth_noise(rng, n, 5)[..., None]
    bg = _col((0.62, 0.32, 0.1), rng) * (0.75 + 0.25 * grain) * (0.85 + 0.3 * blot)
    spots = (rng.random((n, n, 1)) < 0.15) * _col((0.85, 0.45, 0.1), rng)
    fill = _col((0.28, 0.11, 0.05), rng) * (0.8 + 0.2 * grain)
    fill = np.where(spots > 0, spots, fill)
    return _mix(np.clip(bg, 0, 1), fill, a)


def _arcs(rng: np.random.Generator, n: int, count: int, radius: tuple[float, float]) -> np.ndarray:
    """Boolean (n, n) map of ``count`` short circular arcs (half circles at random centres and turns)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    out = np.zeros((n, n), dtype=bool)
    for _ in range(count):
        cx, cy = rng.uniform(-2, n + 2, 2)
        r, start = rng.uniform(*radius), rng.uniform(0, 2 * np.pi)
        d = np.hypot(xx - cx, yy - cy)
        turn = (np.arctan2(yy - cy, xx - cx) - start) % (2 * np.pi)
        out |= (np.abs(d - r) < 0.6) & (turn < np.pi)
    return out


def _van_gogh(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    bg = _flat(_col((0.08, 0.16, 0.48), rng), n) * (0.85 + 0.15 * _smooth_noise(rng, n, 6)[..., None])
    bg = _mix(bg, _col((0.35, 0.55, 0.9), rng), _arcs(rng, n, 10, (2.0, 4.5)) * 0.8)
    bg = _mix(bg, _col((0.92, 0.94, 0.8), rng), _arcs(rng, n, 4, (1.5, 3.0)) * 0.75)
    yy, xx = np.mgrid[0:n, 0:n]
    strokes = 0.8 + 0.2 * (((xx + 2 * yy + rng.integers(0, 4)) // 2) % 2)[..., None]
    img = _mix(bg, _col((0.06, 0.05, 0.12), rng), _ring(a))
    return _mix(img, _col((0.95, 0.72, 0.16), rng) * strokes, a)


def _facets(rng: np.random.Generator, n: int, lines: int) -> np.ndarray:
    """Integer (n, n) map of the cells cut by ``lines`` random straight lines (angular facets)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    code = np.zeros((n, n), dtype=np.int64)
    for k in range(lines):
        ang, off = rng.uniform(0, np.pi), rng.uniform(0.2 * n, 0.8 * n)
        side = np.cos(ang) * (xx - n / 2) + np.sin(ang) * (yy - n / 2) + n / 2 > off
        code |= side.astype(np.int64) << k
    return code


def _cubism(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    ground = np.array([(0.78, 0.68, 0.5), (0.62, 0.64, 0.64), (0.82, 0.74, 0.44), (0.55, 0.6, 0.68)])
    figure = np.array([(0.36, 0.25, 0.17), (0.46, 0.38, 0.28), (0.28, 0.29, 0.33), (0.52, 0.4, 0.22)])
    cells = _facets(rng, n, 7)
    pick = (cells * 7 + rng.integers(0, 4)) % 4
    shade = (0.88 + 0.24 * ((cells * 0.618) % 1.0))[..., None]
    bg = (ground[pick] + rng.uniform(-0.04, 0.04, 3)) * shade
    fill = (figure[(pick + 1) % 4] + rng.uniform(-0.04, 0.04, 3)) * shade
    hard = (a > 0.5).astype(float)
    img = _mix(bg, fill, hard)
    return _mix(img, _col((0.12, 0.1, 0.08), rng), np.clip(_edge(hard) * 1.5, 0, 1))


def _glowing_sunset(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    g = np.linspace(0, 1, n)[:, None, None]
    sky = _col((0.42, 0.16, 0.5), rng) * (1 - g) + _col((1.0, 0.55, 0.15), rng) * g
    img = np.broadcast_to(sky, (n, n, 3)).copy()
    yy, xx = np.mgrid[0:n, 0:n]
    cx, cy, r = rng.uniform(0.2 * n, 0.8 * n), rng.uniform(0.45 * n, 0.8 * n), rng.uniform(3.5, 6.0)
    d = np.hypot(xx - cx, yy - cy)
    img = _mix(img, _col((1.0, 0.8, 0.35), rng), np.clip((2.5 * r - d) / (2.5 * r), 0, 1) * 0.6)
    img = _mix(img, _col((1.0, 0.95, 0.7), rng), np.clip(r + 0.5 - d, 0, 1))
    return _mix(img, _col((0.08, 0.04, 0.1), rng, 0.02), a)


def _dabs(rng: np.random.Generator, n: int, palette: np.ndarray, count: int) -> np.ndarray:
    """(n, n, 3) image of ``count`` small overlapping 1x2 / 2x1 / 2x2 dabs drawn from ``palette``.

    Dabs are painted in order (a later dab covers an earlier one), on a ground of ``palette[0]``.
    """
    y, x = rng.integers(0, n, (2, count))
    kind = rng.choice(3, count, p=[0.4, 0.3, 0.3])  # 1 row x 2 columns, 2 x 1, 2 x 2
    colors = palette[rng.integers(0, len(palette), count)] + rng.uniform(-0.04, 0.04, (count, 3))
    owner = np.full((n + 1, n + 1), -1)
    for dy, dx, covers in ((0, 0, kind >= 0), (0, 1, kind != 1), (1, 0, kind != 0), (1, 1, kind == 2)):
        np.maximum.at(owner, (y[covers] + dy, x[covers] + dx), np.flatnonzero(covers))
    owner = owner[:n, :n]
    return np.where(owner[..., None] >= 0, colors[owner], palette[0])


def _monet(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    water = np.array([(0.4, 0.62, 0.48), (0.3, 0.5, 0.66), (0.52, 0.72, 0.56), (0.45, 0.6, 0.8)])
    lilac = np.array([(0.86, 0.62, 0.86), (0.96, 0.72, 0.8), (0.76, 0.58, 0.9)])
    bg = _dabs(rng, n, water + rng.uniform(-0.04, 0.04, 3), n * n // 2)
    fill = _dabs(rng, n, lilac + rng.uniform(-0.04, 0.04, 3), n * n // 4)
    img = _mix(bg, fill, np.clip(0.5 * a + 0.75 * _blur(a), 0, 1))
    return 0.75 * img + 0.25 * np.stack([_blur(img[..., c]) for c in range(3)], -1)


def _magic_cube(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, t = a.shape[0], 4
    k = n // t
    colors = np.array(
        [(0.85, 0.1, 0.1), (0.1, 0.65, 0.25), (0.1, 0.3, 0.85), (0.98, 0.85, 0.1), (1.0, 0.5, 0.05)]
    )
    tiles = colors[rng.integers(0, len(colors), (k, k))] + rng.uniform(-0.04, 0.04, 3)
    img = np.repeat(np.repeat(tiles, t, 0), t, 1)
    gap = np.arange(n) % t == 0
    img[gap[:, None] | gap[None, :]] = 0.05
    img = _mix(img, np.zeros(3), _ring(a))
    return _mix(img, _col((0.97, 0.97, 0.95), rng, 0.02), a)


def _meteor_shower(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    g = np.linspace(0, 1, n)[:, None, None]
    img = np.broadcast_to(
        _col((0.03, 0.05, 0.18), rng) * (1 - g) + _col((0.1, 0.14, 0.34), rng) * g, (n, n, 3)
    )
    img = _mix(img, np.array([1.0, 1.0, 0.9]), (rng.random((n, n)) < 0.04) * rng.uniform(0.5, 1.0, (n, n)))
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    dx, dy = np.cos(np.pi / 4), np.sin(np.pi / 4) * rng.choice([-1.0, 1.0])
    for _ in range(int(rng.integers(3, 6))):
        hx, hy, length = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(6, 12)
        t = (xx - hx) * dx + (yy - hy) * dy  # along the streak (negative = behind the head)
        d = np.abs(-(xx - hx) * dy + (yy - hy) * dx)
        streak = (d < 0.7) & (t <= 0) & (t > -length)
        img = _mix(img, _col((1.0, 0.95, 0.75), rng), streak * np.clip(1 + t / length, 0.15, 1))
    img = _mix(img, _col((0.24, 0.1, 0.36), rng), a)
    return _mix(img, _col((0.8, 0.85, 1.0), rng), _edge(a) * 0.9)


def _blossom_season(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    bg = _flat(_col((0.74, 0.9, 0.62), rng), n) * (0.92 + 0.08 * _smooth_noise(rng, n, 5)[..., None])
    pink = _col((1.0, 0.62, 0.78), rng)
    img = _mix(bg, pink, (rng.random((n, n)) < 0.06) * 0.9)
    img = _mix(img, _col((0.45, 0.28, 0.15), rng) * (0.9 + 0.1 * rng.random((n, n, 1))), a)
    return _mix(img, _col((1.0, 0.75, 0.88), rng), a * (rng.random((n, n)) < 0.25))


def _red_blue_ink(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = a.shape[0]
    paper = _flat(_col((0.98, 0.98, 0.97), rng, 0.02), n)
    img = _mix(paper, _col((0.88, 0.1, 0.22), rng), a * (0.85 + 0.15 * rng.random((n, n))))
    sy, sx = rng.choice([-2, -1, 1, 2], 2)
    shifted = np.roll(np.roll(np.pad(a, 2), sy, 0), sx, 1)[2:-2, 2:-2]
    rim = np.clip(shifted - _shift_stack(shifted, 1).min(0), 0, 1)  # the shifted shape's inner boundary
    return _mix(img, _col((0.1, 0.25, 0.85), rng), rim * 0.9)


STYLE_FNS: dict[str, StyleFn] = {
    "Crayon": _crayon,
    "Mosaic": _mosaic,
    "Neon_Lines": _neon_lines,
    "Pastel": _pastel,
    "Sketch": _sketch,
    "Pop_Art": _pop_art,
    "Watercolor": _watercolor,
    "On_Fire": _on_fire,
    "Ink_Art": _ink_art,
    "Bricks": _bricks,
    "Winter": _winter,
    "Rust": _rust,
    "Van_Gogh": _van_gogh,
    "Cubism": _cubism,
    "Glowing_Sunset": _glowing_sunset,
    "Monet": _monet,
    "Magic_Cube": _magic_cube,
    "Meteor_Shower": _meteor_shower,
    "Blossom_Season": _blossom_season,
    "Red_Blue_Ink": _red_blue_ink,
}
assert tuple(STYLE_FNS) == STYLES and tuple(SHAPES) == OBJECTS


# ----------------------------------------------------------------------------- public API
def render(style: str, object: str, *, seed: int, size: int = 32) -> np.ndarray:  # noqa: A002
    """Render one image, deterministic in ``(style, object, seed, size)``.

    Args:
        style: a style name in any spelling (see :func:`hirm.world.canonical_name`).
        object: an object name in any spelling.
        seed: non-negative integer seed.
        size: side in pixels (a multiple of 8).

    Returns:
        uint8 array of shape (size, size, 3).
    """
    sty, obj = canonical_name(style), canonical_name(object)
    if sty not in STYLES or obj not in OBJECTS:
        raise ValueError(f"render(style, object): got style={style!r}, object={object!r}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8, got {size}")
    rng = np.random.default_rng([int(seed), STYLES.index(sty), OBJECTS.index(obj)])
    alpha = object_mask(obj, rng, size)
    img = STYLE_FNS[sty](alpha, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_batch(
    styles: Sequence[str], objects: Sequence[str], seeds: Sequence[int], *, size: int = 32
) -> np.ndarray:
    """Render ``len(seeds)`` images (styles/objects/seeds zipped). Returns uint8 (N, size, size, 3)."""
    if not (len(styles) == len(objects) == len(seeds)):
        raise ValueError("styles, objects and seeds must have the same length")
    out = np.empty((len(seeds), size, size, 3), dtype=np.uint8)
    for i, (s, o, sd) in enumerate(zip(styles, objects, seeds, strict=True)):
        out[i] = render(s, o, seed=int(sd), size=size)
    return out


def render_grid(
    seeds_per_pair: int, *, seed0: int, size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every style x object pair rendered ``seeds_per_pair`` times with seeds ``seed0 + k``.

    Returns:
        images uint8 (N, size, size, 3), style indices int64 (N,), object indices int64 (N,),
        with N = len(STYLES) * len(OBJECTS) * seeds_per_pair.
    """
    s_idx, o_idx, seeds = [], [], []
    for si in range(len(STYLES)):
        for oi in range(len(OBJECTS)):
            for k in range(seeds_per_pair):
                s_idx.append(si)
                o_idx.append(oi)
                seeds.append(seed0 + k)
    imgs = render_batch([STYLES[i] for i in s_idx], [OBJECTS[i] for i in o_idx], seeds, size=size)
    return imgs, np.asarray(s_idx, dtype=np.int64), np.asarray(o_idx, dtype=np.int64)
