"""Deterministic synthetic video clips: the project's built-in default training data.

A short training run of a video codec should show its rate-distortion loss falling
without downloading a data set. Pure noise is no good for that (it is incompressible
and has no motion to predict), so each clip here is a procedurally generated scene
with the structure a Scale-Space Flow codec is built to exploit:

* a textured background (1/f-like value noise at several scales, domain-warped
  gratings, two "materials" separated by irregular sharp boundaries, slow
  illumination changes) that moves with a **global motion**: a sub-pixel camera pan
  plus a slight zoom about the image centre;
* 2-5 foreground **objects** (ellipses, rectangles, convex polygons) with flat-shaded,
  noisy or striped textures that stay attached to the object, each with its own
  velocity and slow rotation (**local motion**), drawn far-to-near so they
  **occlude** each other and the background, with sharp anti-aliased edges;
* mild per-frame **sensor noise**, independent between frames.

Determinism: every random quantity comes from ``np.random.Generator(PCG64(seed))``
using only uniform draws, and rendering uses only IEEE-754 operations that are
correctly rounded (``+ - * /``, ``sqrt``, ``floor``, ``abs``, min/max, indexing) in
float64; sines and cosines come from the helpers below instead of libm / SIMD math
kernels, whose last bits differ between CPUs and NumPy builds. Torch is only used to
wrap the finished array, so the output is bit-identical for a given
``(seed, num_frames, height, width)`` on any machine and any thread count.

Coordinates are in pixels; pixel ``(i, j)`` has its centre at ``(x, y) = (j + 0.5,
i + 0.5)``. Velocities are in pixels per frame, angles in radians.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticClips", "synthetic_clip"]

#: Smallest height/width accepted: below this the objects and textures degenerate.
MIN_SIZE = 16

_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------


def _as_int(name: str, value: object) -> int:
    """Return ``value`` as a Python int (accepts numpy integers), or raise ValueError."""
    if isinstance(value, bool):  # bool is an int subclass but never a sensible size
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_clip_args(seed: object, num_frames: object, height: object, width: object) -> tuple[int, int, int, int]:
    seed = _as_int("seed", seed)
    num_frames = _as_int("num_frames", num_frames)
    height = _as_int("height", height)
    width = _as_int("width", width)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"height and width must be >= {MIN_SIZE}, got height={height}, width={width}")
    return seed, num_frames, height, width


# --------------------------------------------------------------------------------------
# Bit-reproducible math helpers (no libm / SIMD transcendental functions)
# --------------------------------------------------------------------------------------


def _cos_sin(theta: float) -> tuple[float, float]:
    """(cos θ, sin θ) of a scalar angle in radians, from a Taylor series.

    Python floats are IEEE doubles and ``fmod``/``+``/``*``/``/`` are correctly rounded,
    so this gives the same bits everywhere (``math.cos`` may not). Accurate to ~1e-15.
    """
    t = math.fmod(float(theta), _TWO_PI)
    if t > math.pi:
        t -= _TWO_PI
    elif t < -math.pi:
        t += _TWO_PI
    t2 = t * t
    c = s = 0.0
    term_c, term_s = 1.0, t
    for n in range(1, 24):  # |t| <= pi: the terms are below 1e-17 well before n = 24
        c += term_c
        s += term_s
        term_c *= -t2 / ((2 * n - 1) * (2 * n))
        term_s *= -t2 / ((2 * n) * (2 * n + 1))
    return c, s


def _wave(u: np.ndarray) -> np.ndarray:
    """Sine-like wave with period 1 in ``u`` and range [-1, 1] (≈ sin(2πu), error < 1e-3).

    A parabola with one correction step: cheap and built from exact operations only.
    """
    x = 2.0 * (u - np.floor(u + 0.5))  # in [-1, 1): one period
    y = 4.0 * x * (1.0 - np.abs(x))  # parabolic approximation of sin(pi x)
    return y + 0.225 * (y * np.abs(y) - y)


def _smooth_cells(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split lattice coordinates ``u`` into (cell index mod n, next index mod n, weight)."""
    fu = np.floor(u)
    t = u - fu
    t = t * t * (3.0 - 2.0 * t)  # smoothstep: continuous gradient across cells
    i0 = fu.astype(np.int64) % n
    i1 = i0 + 1
    i1[i1 == n] = 0
    return i0, i1, t


def _value_noise(lattice: np.ndarray, x: np.ndarray, y: np.ndarray, cell: float) -> np.ndarray:
    """Smooth value noise: a periodic random lattice interpolated with a smoothstep.

    Args:
        lattice: (Py, Px) float64 random values in [-1, 1]; the noise tiles with period
            (Py * cell, Px * cell) pixels, so any coordinate is valid.
        x, y: sample coordinates in pixels, broadcastable against each other: either
            (1, W) and (H, 1) (an axis-aligned warp; takes a faster separable path) or
            two arrays of the same shape.
        cell: lattice spacing in pixels (the feature size of the noise).

    Returns:
        Noise of the broadcast shape of ``x`` and ``y``, roughly in [-1, 1]. It is a
        continuous function of (x, y), so warped coordinates give sub-pixel motion.
    """
    py, px = lattice.shape
    ix0, ix1, tx = _smooth_cells(x / cell, px)
    iy0, iy1, ty = _smooth_cells(y / cell, py)
    if x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1:
        # Separable: interpolate every lattice row along x once (Py x W), then pick and
        # blend rows along y. Same arithmetic as the general path, far fewer gathers.
        c0 = lattice[:, ix0[0]]
        rows = c0 + (lattice[:, ix1[0]] - c0) * tx
        top = rows[iy0[:, 0]]
        return top + (rows[iy1[:, 0]] - top) * ty
    flat = lattice.ravel()
    r0 = iy0 * px
    r1 = iy1 * px
    top = flat.take(r0 + ix0)
    top = top + (flat.take(r0 + ix1) - top) * tx
    bot = flat.take(r1 + ix0)
    bot = bot + (flat.take(r1 + ix1) - bot) * tx
    return top + (bot - top) * ty


def _lattice(rng: np.random.Generator, extent: float, cell: float) -> np.ndarray:
    """Random (n, n) lattice in [-1, 1] whose period covers ``extent`` pixels at ``cell`` spacing."""
    n = max(4, int(math.ceil(extent / cell)) + 2)
    return rng.uniform(-1.0, 1.0, size=(n, n))


def _random_unit(rng: np.random.Generator) -> tuple[float, float]:
    """A direction uniformly distributed on the circle, as (cos, sin)."""
    return _cos_sin(rng.uniform(0.0, _TWO_PI))


def _random_colour(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    """(3,) RGB colour, partly desaturated: natural scenes are mostly low-chroma."""
    c = rng.uniform(lo, hi, size=3)
    grey = (c[0] + c[1] + c[2]) / 3.0
    return grey + (c - grey) * rng.uniform(0.25, 1.0)


# --------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------


class _Background:
    """Texture that covers the plane, sampled through the camera motion each frame."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, num_frames: int, motion: float):
        # Global motion: pan (pixels/frame, sub-pixel in general) and zoom factor per
        # frame. The camera is still in some clips; pans up to ~4 px/frame at 256 px.
        cx, cy = _random_unit(rng)
        speed = rng.uniform(0.0, 4.0) * motion
        self.pan = (speed * cx, speed * cy)
        self.zoom = 1.0 + rng.uniform(-0.012, 0.012)  # slight zoom in/out per frame

        # The lattices must cover the image plus how far the camera travels, so the
        # periodic tiling of the noise never shows within a clip of ordinary length.
        extent = max(height, width) * 1.25 + speed * num_frames + 8.0
        small = min(height, width)

        # Region noise: very coarse, thresholded below into two materials.
        self.region_cell = rng.uniform(0.35, 0.6) * small
        self.region = _lattice(rng, extent, self.region_cell)
        # Domain warp for the region boundaries: thresholded value noise alone shows its
        # square lattice; pushing the lookup around by two other noise fields makes the
        # boundaries organic. Amplitude in pixels.
        self.warp_cell = rng.uniform(8.0, 16.0)
        self.warp_lats = (_lattice(rng, extent, self.warp_cell), _lattice(rng, extent, self.warp_cell))
        self.warp_amp = rng.uniform(3.0, 8.0)
        # Noise octaves, coarse -> fine, weighted below with amplitudes falling with scale
        # (1/f-like, as in natural images). Cells in pixels; the coarse one scales with
        # the frame so small frames still show large-scale variation.
        self.cells = [
            rng.uniform(0.15, 0.3) * small,
            rng.uniform(10.0, 22.0),
            rng.uniform(3.0, 6.0),
            rng.uniform(1.2, 2.2),
        ]
        self.octaves = [_lattice(rng, extent, c) for c in self.cells]

        # Two gratings (oriented stripes such as bricks, fabric, wood grain), whose
        # phase is warped by the coarse noise so they bend like real surfaces.
        self.gratings = []
        for _ in range(2):
            gx, gy = _random_unit(rng)
            period = rng.uniform(5.0, 40.0)
            self.gratings.append(
                (gx / period, gy / period, rng.uniform(0.0, 1.0), rng.uniform(0.3, 2.5), rng.uniform(1.0, 3.0))
            )

        # Two materials, blended by a sharp threshold of the region noise: gives large
        # regions with crisp, irregular boundaries (e.g. sky / buildings / grass).
        self.threshold = rng.uniform(-0.3, 0.3)
        self.materials = []
        for _ in range(2):
            base = _random_colour(rng)
            octave_w = rng.uniform(0.0, 1.0, size=4) * np.array([0.45, 0.3, 0.2, 0.1])
            grating_w = rng.uniform(0.0, 1.0, size=2) * 0.35 * (rng.uniform(0.0, 1.0, size=2) < 0.5)
            chroma = (rng.uniform(-1.0, 1.0, size=3)) * 0.12
            # Cap the total texture contrast so bright materials do not saturate at 1.
            total = sum(octave_w.tolist()) + sum(grating_w.tolist())  # plain Python sum: fixed order
            if total > 0.6:
                octave_w, grating_w = octave_w * (0.6 / total), grating_w * (0.6 / total)
            self.materials.append((base, octave_w, grating_w, chroma))
        self.illum_amp = rng.uniform(0.0, 0.25)

    def render(self, t: int, xs: np.ndarray, ys: np.ndarray, out: np.ndarray) -> None:
        """Write frame ``t`` of the background into ``out`` (3, H, W).

        ``xs`` (1, W) and ``ys`` (H, 1) are the pixel-centre coordinates relative to the
        image centre. Pan plus zoom is axis-aligned, so the warped coordinates stay
        separable and the noise lookups broadcast instead of using (H, W) index arrays.
        """
        scale = 1.0
        for _ in range(t):  # zoom**t by repeated products: exact-op only, see module doc
            scale *= self.zoom
        # Screen point q shows scene point q / scale + t * pan (the camera moves by pan).
        bx = xs / scale + t * self.pan[0]
        by = ys / scale + t * self.pan[1]

        octs = [_value_noise(lat, bx, by, c) for lat, c in zip(self.octaves, self.cells)]
        coarse = octs[0]
        wx = bx + self.warp_amp * _value_noise(self.warp_lats[0], bx, by, self.warp_cell)
        wy = by + self.warp_amp * _value_noise(self.warp_lats[1], bx, by, self.warp_cell)
        region = _value_noise(self.region, wx, wy, self.region_cell)
        # A transition a few pixels wide: a sharp boundary, but not an aliased one.
        mask = np.clip((region - self.threshold) * 12.0 + 0.5, 0.0, 1.0)

        grats = []
        for fx, fy, phase, warp, sharp in self.gratings:
            g = _wave(bx * fx + by * fy + phase + warp * coarse)
            grats.append(np.clip(g * sharp, -1.0, 1.0))  # sharp > 1 squares the stripes up

        illum = 1.0 + self.illum_amp * coarse  # slow shading across the scene
        chroma_field = octs[1]
        layers = []
        for base, octave_w, grating_w, chroma in self.materials:
            lum = octave_w[0] * octs[0]
            for k in range(1, 4):
                lum = lum + octave_w[k] * octs[k]
            for k in range(2):
                if grating_w[k] != 0.0:
                    lum = lum + grating_w[k] * grats[k]
            lum = (1.0 + lum) * illum  # reflectance texture times illumination
            layers.append([base[c] * lum + chroma[c] * chroma_field for c in range(3)])
        for c in range(3):
            a = layers[0][c]
            out[c] = a + (layers[1][c] - a) * mask


class _Object:
    """A rigid foreground object: shape, texture in object coordinates, and its motion."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, num_frames: int, motion: float):
        small = min(height, width)
        r = max(3.0, rng.uniform(0.06, 0.2) * small)  # size, pixels
        self.a = r
        self.b = r * rng.uniform(0.35, 1.0)
        kind = rng.integers(0, 3)
        self.kind = ("ellipse", "rect", "poly")[kind]
        if self.kind == "ellipse":
            self.radius = max(self.a, self.b)
        elif self.kind == "rect":
            self.radius = math.sqrt(self.a * self.a + self.b * self.b)
        else:
            self._make_polygon(rng, r)

        # Local motion: its own velocity (pixels/frame) and a slow rotation. The path is
        # centred on the middle of the clip so objects are in view for most frames.
        dx, dy = _random_unit(rng)
        speed = rng.uniform(0.3, 6.0) * motion
        self.vel = (speed * dx, speed * dy)
        mid_x = rng.uniform(0.1, 0.9) * width
        mid_y = rng.uniform(0.1, 0.9) * height
        half = 0.5 * (num_frames - 1)
        self.start = (mid_x - half * self.vel[0], mid_y - half * self.vel[1])
        self.angle0 = rng.uniform(0.0, _TWO_PI)
        self.omega = rng.uniform(-0.04, 0.04)  # radians/frame

        # Texture, fixed to the object so it moves and rotates with it.
        self.colour = _random_colour(rng, 0.05, 0.95)
        self.texture = ("flat", "noise", "stripes")[rng.integers(0, 3)]
        self.shade_dir = _random_unit(rng)
        self.shade = rng.uniform(0.0, 0.35)  # linear shading: light from one side
        self.tex_amp = rng.uniform(0.1, 0.4)
        self.tex_colour = 0.6 + 0.8 * rng.uniform(0.0, 1.0, size=3)  # slightly tinted texture
        if self.texture == "noise":
            self.cells = (rng.uniform(4.0, 12.0), rng.uniform(1.5, 3.0))
            self.lats = tuple(_lattice(rng, 2.0 * self.radius + 4.0, c) for c in self.cells)
        elif self.texture == "stripes":
            sx, sy = _random_unit(rng)
            period = rng.uniform(3.0, 16.0)
            self.stripe = (sx / period, sy / period, rng.uniform(0.0, 1.0), rng.uniform(1.0, 4.0))

    def _make_polygon(self, rng: np.random.Generator, r: float) -> None:
        """Convex polygon as the intersection of k half-planes n_i . p <= d_i (k = 3..7)."""
        for _ in range(32):  # rejection: avoid needle-like spikes (bounded radius)
            k = int(rng.integers(3, 8))
            phase = rng.uniform(0.0, _TWO_PI)
            jitter = rng.uniform(-0.2, 0.2, size=k)
            normals = [_cos_sin(phase + _TWO_PI * (i + jitter[i]) / k) for i in range(k)]
            offsets = r * rng.uniform(0.6, 1.0, size=k)
            verts = []
            for i in range(k):
                (n0x, n0y), (n1x, n1y) = normals[i], normals[(i + 1) % k]
                d0, d1 = offsets[i], offsets[(i + 1) % k]
                det = n0x * n1y - n0y * n1x  # > 0: consecutive normals less than pi apart
                verts.append(((d0 * n1y - d1 * n0y) / det, (n0x * d1 - n1x * d0) / det))
            radius = max(math.sqrt(vx * vx + vy * vy) for vx, vy in verts)
            if radius <= 2.2 * r:
                break
        self.normals, self.offsets, self.radius = normals, offsets, radius

    def _sdf(self, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
        """Approximate signed distance (pixels, negative inside) in object coordinates."""
        if self.kind == "rect":
            return np.maximum(np.abs(lx) - self.a, np.abs(ly) - self.b)
        if self.kind == "ellipse":
            # f / |grad f| for f = (x/a)^2 + (y/b)^2 - 1: exact to first order at the edge.
            ia2, ib2 = 1.0 / (self.a * self.a), 1.0 / (self.b * self.b)
            f = lx * lx * ia2 + ly * ly * ib2 - 1.0
            gx, gy = 2.0 * lx * ia2, 2.0 * ly * ib2
            return f / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-6)
        sd = None
        for (nx, ny), d in zip(self.normals, self.offsets):
            h = lx * nx + ly * ny - d
            sd = h if sd is None else np.maximum(sd, h)
        return sd

    def render(self, t: int, out: np.ndarray) -> None:
        """Composite the object at frame ``t`` over ``out`` (3, H, W), in place."""
        _, height, width = out.shape
        cx = self.start[0] + t * self.vel[0]
        cy = self.start[1] + t * self.vel[1]
        # Only touch the object's bounding box (+ anti-aliasing margin): keeps it fast.
        reach = self.radius + 1.5
        j0, j1 = max(0, int(math.floor(cx - reach))), min(width, int(math.ceil(cx + reach)) + 1)
        i0, i1 = max(0, int(math.floor(cy - reach))), min(height, int(math.ceil(cy + reach)) + 1)
        if j0 >= j1 or i0 >= i1:
            return  # entirely off screen this frame
        xs = (np.arange(j0, j1, dtype=np.float64) + (0.5 - cx))[None, :]
        ys = (np.arange(i0, i1, dtype=np.float64) + (0.5 - cy))[:, None]
        c, s = _cos_sin(self.angle0 + t * self.omega)
        lx = c * xs + s * ys  # rotate screen offsets into object coordinates
        ly = c * ys - s * xs

        # Coverage from the signed distance: a 1 px ramp, i.e. sharp but anti-aliased.
        cov = np.clip(0.5 - self._sdf(lx, ly), 0.0, 1.0)

        shading = 1.0 + self.shade * (lx * self.shade_dir[0] + ly * self.shade_dir[1]) / self.radius
        if self.texture == "noise":
            tex = _value_noise(self.lats[0], lx, ly, self.cells[0]) + 0.5 * _value_noise(
                self.lats[1], lx, ly, self.cells[1]
            )
        elif self.texture == "stripes":
            fx, fy, phase, sharp = self.stripe
            tex = np.clip(_wave(lx * fx + ly * fy + phase) * sharp, -1.0, 1.0)
        else:
            tex = None
        region = out[:, i0:i1, j0:j1]
        for ch in range(3):
            col = self.colour[ch] * shading
            if tex is not None:
                col = col + (self.tex_amp * self.tex_colour[ch]) * tex
            region[ch] += cov * (col - region[ch])


def _highlight_shoulder(frame: np.ndarray, knee: float = 0.8) -> None:
    """Compress values above ``knee`` smoothly towards 1, in place (a camera tone curve).

    Bright textured materials would otherwise clip into large flat white areas that
    carry no texture; the curve has slope 1 at the knee and approaches 1 asymptotically.
    """
    head = 1.0 - knee
    d = np.maximum(frame - knee, 0.0)
    np.copyto(frame, knee + head * d / (d + head), where=frame > knee)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def synthetic_clip(seed: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """Generate one synthetic video clip.

    Args:
        seed: non-negative integer; fully determines the clip (with the sizes below).
        num_frames: number of frames T >= 1.
        height, width: frame size H, W in pixels, each >= 16.

    Returns:
        (T, 3, H, W) float32 RGB tensor with values in [0, 1]. The same arguments give
        bit-identical output on any machine and any torch thread count.

    Raises:
        ValueError: if an argument is not an integer or out of range.
    """
    seed, num_frames, height, width = _check_clip_args(seed, num_frames, height, width)
    rng = np.random.Generator(np.random.PCG64(seed))

    # Motion is specified for 256 px frames and scaled with the frame size, so small
    # test crops and large frames see the same motion relative to the picture.
    motion = max(0.125, min(height, width) / 256.0)
    # Draw every scene parameter first, in a fixed order, then the per-frame noise.
    background = _Background(rng, height, width, num_frames, motion)
    objects = [_Object(rng, height, width, num_frames, motion) for _ in range(int(rng.integers(2, 6)))]
    noise_sigma = rng.uniform(0.002, 0.012)

    xs = (np.arange(width, dtype=np.float64) + (0.5 - 0.5 * width))[None, :]
    ys = (np.arange(height, dtype=np.float64) + (0.5 - 0.5 * height))[:, None]
    clip = np.empty((num_frames, 3, height, width), dtype=np.float64)
    noise_scale = noise_sigma * math.sqrt(12.0)  # uniform noise with std = noise_sigma
    for t in range(num_frames):
        frame = clip[t]
        background.render(t, xs, ys, frame)
        for obj in objects:  # list order = depth order, far to near: later ones occlude
            obj.render(t, frame)
        _highlight_shoulder(frame)
        # Sensor noise, fresh every frame: uniform draws (not normal(), whose tail path
        # calls libm exp/log) keep the output bit-reproducible.
        frame += (rng.random(size=frame.shape) - 0.5) * noise_scale
    np.clip(clip, 0.0, 1.0, out=clip)
    return torch.from_numpy(clip.astype(np.float32))


class SyntheticClips(Dataset):
    """Map-style dataset of ``num_clips`` synthetic clips, generated on the fly.

    Item ``i`` is ``synthetic_clip(s_i, num_frames, height, width)`` with ``s_i`` hashed
    from ``(seed, i)`` by NumPy's SeedSequence, so clips are independent of each other,
    of the access order, and of DataLoader worker count; two datasets with different
    ``seed`` share no clips.

    Args:
        num_clips: dataset length, >= 1.
        num_frames: frames T per clip, >= 1.
        height, width: frame size in pixels, each >= 16.
        seed: non-negative base seed.
    """

    def __init__(self, num_clips: int, num_frames: int = 3, height: int = 256, width: int = 256, seed: int = 0):
        num_clips = _as_int("num_clips", num_clips)
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.seed, self.num_frames, self.height, self.width = _check_clip_args(seed, num_frames, height, width)
        self.num_clips = num_clips

    def __len__(self) -> int:
        return self.num_clips

    def clip_seed(self, index: int) -> int:
        """The seed passed to :func:`synthetic_clip` for item ``index`` (0 <= index < len)."""
        state = np.random.SeedSequence([self.seed, index]).generate_state(2, dtype=np.uint32)
        return (int(state[0]) << 32) | int(state[1])

    def __getitem__(self, index: int) -> torch.Tensor:
        """(T, 3, H, W) float32 clip in [0, 1]; negative indices count from the end."""
        index = operator.index(index)
        if index < 0:
            index += self.num_clips
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index out of range for SyntheticClips of length {self.num_clips}")
        return synthetic_clip(self.clip_seed(index), self.num_frames, self.height, self.width)
