"""Vectorised Pathfinder image generator (Linsley et al. 2018; LRA Tay et al. 2021 §3.5).

Shape legend: M candidate images, S image side in pixels, P paddles per contour, Q primitives per image.

Our own generator in the spirit of ``drewlinsley/pathfinder`` (same task, same difficulty axis); it does
not reproduce the LRA images pixel for pixel. An image holds two main contours of ``P`` paddles (short
line segments, "dashes") and ``20 / (P // 3) * sqrt(S / 32) / 2`` short distractor contours of ``P // 3``
paddles. A contour is a random walk: each paddle turns from the previous one by an angle uniform in
``[-max_turn, max_turn]`` and starts one gap after the previous one ends; the finished shape is moved
to a uniform position where it fits inside the image. Contours keep a clearance from each other
(checked on points sampled along the paddles) and the ends of A and B stay two marker radii apart, so
different contours never touch. Two circular markers sit on contour ends: label 1 -> both ends of
contour A; label 0 -> one end of A and one end of B. Positive and negative images share the same
geometry distribution; only the marker placement differs. Geometry is in pixel units at 32 px and
scales with ``S / 32`` (lengths) or its square root (stroke width, marker radius, clearance). Rendering
stamps anti-aliased primitives (intensity = clip(radius + 0.5 - distance, 0, 1)) on small patches and
combines them with a maximum.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from algornn.experiments._progress import progress as progress_bar

CONTOUR_LENGTH = {"easy": 6, "intermediate": 9, "hard": 14}  # LRA: curv_baseline / _length_9 / _length_14
SIZES = (32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Drawing parameters in pixels at image side ``size``."""

    size: int
    paddles: int
    paddle_length: float
    gap: float
    half_width: float
    marker_radius: float
    max_turn: float
    separation: float  # minimum edge-to-edge distance between different contours
    n_distractors: int
    distractor_paddles: int

    @classmethod
    def for_size(cls, size: int, difficulty: str) -> Geometry:
        s = size / 32.0
        paddles = CONTOUR_LENGTH[difficulty]
        return cls(
            size=size,
            paddles=paddles,
            paddle_length=1.6 * s,
            gap=0.8 * s,
            half_width=0.5 * math.sqrt(s),
            marker_radius=1.5 * math.sqrt(s),
            max_turn=math.pi / 6,
            separation=2.0 * math.sqrt(s),
            n_distractors=max(1, round(20 / max(paddles // 3, 1) * s**0.5 / 2)),
            distractor_paddles=max(2, paddles // 3),
        )


def _walk(rng, m, paddles, g: Geometry):
    """Random contours placed inside the image: segment starts/ends (m, P, 2) each, and validity (m,).

    The shape is drawn first (cumulative turns), then translated uniformly to wherever its bounding box
    fits; shapes larger than the image are invalid (the caller retries them).
    """
    turns = rng.uniform(-g.max_turn, g.max_turn, (m, paddles))
    turns[:, 0] = rng.uniform(0.0, 2 * np.pi, m)
    angle = np.cumsum(turns, axis=1)
    d = np.stack([np.cos(angle), np.sin(angle)], -1)  # (m, P, 2)
    step = (g.paddle_length + g.gap) * d
    start = np.cumsum(step, axis=1) - step
    end = start + g.paddle_length * d
    lo = np.minimum(start.min(1), end.min(1))  # (m, 2)
    hi = np.maximum(start.max(1), end.max(1))
    margin = g.half_width + 1.0
    room = (g.size - 2 * margin) - (hi - lo)
    ok = np.all(room >= 0, axis=1)
    offset = margin - lo + rng.random((m, 2)) * np.maximum(room, 0.0)
    return start + offset[:, None], end + offset[:, None], ok


def _samples(start, end):
    """Points along paddles for clearance checks: (m, 3P, 2)."""
    return np.concatenate([start, 0.5 * (start + end), end], axis=1)


class _Occupancy:
    """Per-image boolean grid of cells closer than the clearance to an already placed contour.

    A point is clear when its cell is unmarked; cells are marked out to ``need + cell diagonal`` around
    points sampled along the paddles (ends and middle), so two contours stay about ``need`` apart (exact
    up to that sampling; the tests measure that labels match pixel connectivity). The grid has a border
    of ``reach`` cells, so no index is clipped.
    """

    def __init__(self, m, g: Geometry):
        self.res = 0.75 * math.sqrt(g.size / 32.0)
        self.need = g.marker_radius + g.half_width + g.separation  # a marker disc facing a paddle
        self.reach = int(math.ceil(self.need / self.res)) + 2
        self.n = int(math.ceil(g.size / self.res)) + 2 * self.reach + 1
        self.grid = np.zeros((m, self.n, self.n), bool)
        oy, ox = np.mgrid[-self.reach : self.reach + 1, -self.reach : self.reach + 1]
        near = np.hypot(oy, ox) * self.res <= self.need + self.res * math.sqrt(2)
        self.offsets = (oy[near] * self.n + ox[near]).astype(np.int64)  # (O,) flat offsets

    def _cells(self, rows, points):
        """Flat cell index (k, X) of points (k, X, 2) (x, y) in images ``rows`` (k,)."""
        c = np.floor(points * (1.0 / self.res)).astype(np.int64) + self.reach
        return (rows[:, None] * self.n + c[..., 1]) * self.n + c[..., 0]

    def clear(self, rows, points):
        """(k,) True when no point (k, X, 2) of image ``rows`` (k,) falls in a marked cell."""
        return ~self.grid.reshape(-1)[self._cells(rows, points)].any(axis=1)

    def add(self, rows, points):
        """Mark cells within the clearance of ``points`` (k, X, 2) in images ``rows`` (k,)."""
        flat = self._cells(rows, points)
        self.grid.reshape(-1)[(flat[:, :, None] + self.offsets).reshape(-1)] = True


def _place(rng, rows, paddles, g, occupancy, retries=30):
    """Contours for images ``rows`` (k,) clear of the occupancy grid; returns starts, ends, ok (k,)."""
    k = rows.size
    start = np.zeros((k, paddles, 2))
    end = np.zeros((k, paddles, 2))
    ok = np.zeros(k, bool)
    todo = np.arange(k)
    for _ in range(retries):
        if todo.size == 0:
            break
        s, e, valid = _walk(rng, todo.size, paddles, g)
        if occupancy is not None:
            valid &= occupancy.clear(rows[todo], _samples(s, e))
        start[todo[valid]], end[todo[valid]], ok[todo[valid]] = s[valid], e[valid], True
        todo = todo[~valid]
    return start, end, ok


def _render(size, seg_a, seg_b, seg_r, disc_c, disc_r):
    """Images (m, S, S) float in [0, 1]: max over segments (m, Q, 2) x2 with radius (m, Q), and discs."""
    m = seg_a.shape[0]
    out = np.zeros(m * size * size, np.float32)
    extent = np.maximum(np.abs(seg_b - seg_a).max(axis=(0, 1, 2)), 0.0) if seg_a.size else 0.0
    rmax = max(float(seg_r.max(initial=0.0)), float(disc_r.max(initial=0.0)))
    patch = int(math.ceil(extent + 2 * rmax + 3))
    # Segments and discs as one list of capsules (a disc is a zero-length capsule).
    a = np.concatenate([seg_a, disc_c], axis=1).reshape(-1, 2)
    b = np.concatenate([seg_b, disc_c], axis=1).reshape(-1, 2)
    r = np.concatenate([seg_r, disc_r], axis=1).reshape(-1)
    img = np.repeat(np.arange(m), seg_a.shape[1] + disc_c.shape[1])
    live = r > 0
    a, b, r, img = a[live], b[live], r[live], img[live]
    origin = np.floor(np.minimum(a, b) - r[:, None] - 1.0).astype(np.int64)  # (Q, 2) as (x, y)
    grid = np.arange(patch)
    px = origin[:, 0, None, None] + grid[None, None, :]  # (Q, 1, patch) column index x
    py = origin[:, 1, None, None] + grid[None, :, None]  # (Q, patch, 1) row index y
    cx, cy = px + 0.5, py + 0.5
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]  # (Q, 1, 1)
    ux, uy = b[:, 0, None, None] - ax, b[:, 1, None, None] - ay
    len2 = np.maximum(ux * ux + uy * uy, 1e-12)
    t = np.clip(((cx - ax) * ux + (cy - ay) * uy) / len2, 0.0, 1.0)  # closest point on the segment
    dx, dy = cx - (ax + t * ux), cy - (ay + t * uy)
    val = np.clip(r[:, None, None] + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0).astype(np.float32)
    px, py = np.broadcast_to(px, val.shape), np.broadcast_to(py, val.shape)
    keep = (val > 0) & (px >= 0) & (px < size) & (py >= 0) & (py < size)
    flat = (np.broadcast_to(img[:, None, None], val.shape) * size + py) * size + px
    np.maximum.at(out, flat[keep], val[keep])
    return out.reshape(m, size, size)


def generate_images(n: int, rng: np.random.Generator, *, size=32, difficulty="hard", chunk=None, progress=False):
    """``n`` balanced Pathfinder images, generated ``chunk`` candidates at a time (memory ~ chunk * S^2).

    Returns ``(images (n, S, S) uint8, labels (n,) int8, markers (n, 2, 2) float (x, y) marker centres)``.
    """
    g = Geometry.for_size(size, difficulty)
    chunk = max(16, 2**21 // size**2) if chunk is None else chunk
    stalled = 0
    images = np.empty((n, size, size), np.uint8)  # filled in place: no second copy of a large split
    markers = np.empty((n, 2, 2))
    have = 0
    bar = progress_bar(n, f"pathfinder{size}-{difficulty}", unit="images", enabled=progress)
    labels_all = rng.permutation(np.arange(n) < n // 2).astype(np.int8)  # exactly n // 2 ones
    while have < n:
        m = min(chunk, int((n - have) * 1.3) + 8)
        rows = np.arange(m)
        occ = _Occupancy(m, g)
        a0, a1, ok = _place(rng, rows, g.paddles, g, None)
        occ.add(rows, _samples(a0, a1))
        b0, b1, ok_b = _place(rng, rows, g.paddles, g, occ)
        # marker discs may sit on any end of A and B: keep those ends two radii + separation apart
        ends = np.stack([a0[:, 0], a1[:, -1]], 1)[:, :, None] - np.stack([b0[:, 0], b1[:, -1]], 1)[:, None]
        ok_ends = np.sqrt((ends**2).sum(-1)).min(axis=(1, 2)) >= 2 * g.marker_radius + g.separation
        keep = np.flatnonzero(ok & ok_b & ok_ends)[: n - have]
        a0, a1, b0, b1 = a0[keep], a1[keep], b0[keep], b1[keep]
        k = keep.size
        stalled = 0 if k else stalled + 1
        if stalled > 20:
            raise RuntimeError(f"pathfinder generator placed no contours in 20 chunks (geometry {g})")
        occ.add(keep, _samples(b0, b1))
        segs_a, segs_b = [a0, b0], [a1, b1]
        for _ in range(g.n_distractors):
            d0, d1, okd = _place(rng, keep, g.distractor_paddles, g, occ, retries=10)
            occ.add(keep[okd], _samples(d0[okd], d1[okd]))
            segs_a.append(np.where(okd[:, None, None], d0, np.nan))  # failed distractors are dropped
            segs_b.append(d1)
        lab = labels_all[have : have + k]
        ends_a = np.stack([a0[:, 0], a1[:, -1]], 1)  # (k, 2, 2)
        ends_b = np.stack([b0[:, 0], b1[:, -1]], 1)
        pick_a = rng.integers(0, 2, k)
        pick_b = rng.integers(0, 2, k)
        rows = np.arange(k)
        first = ends_a[rows, pick_a]
        second = np.where(lab[:, None] == 1, ends_a[rows, 1 - pick_a], ends_b[rows, pick_b])
        disc_c = np.stack([first, second], 1)
        seg_a = np.concatenate(segs_a, 1)
        seg_b = np.concatenate(segs_b, 1)
        seg_r = np.where(np.isnan(seg_a[..., 0]), 0.0, g.half_width)
        seg_a = np.nan_to_num(seg_a)
        img = _render(size, seg_a, seg_b, seg_r, disc_c, np.full((k, 2), g.marker_radius))
        images[have : have + k] = np.round(img * 255)
        markers[have : have + k] = disc_c
        have += k
        bar.update(k)
    bar.close()
    return images, labels_all, markers
