"""Procedural faces, facial dynamics and nuisances for the synthetic DFEW-format dataset.

Everything is drawn with numpy and PIL; nothing is downloaded. A clip is made of three
independent parts, each drawn from its own random stream of the clip's seed:

- an identity (face shape, skin tone, eye spacing, brows, nose, mouth, hair, glasses,
  background, clothes): constant over the clip;
- nuisances over time (head translation / roll / yaw, blinks, occlusion, illumination drift,
  side light, sensor noise), none of which depends on the class;
- the expression: per-frame intensities of action-unit-like channels (`CHANNELS`), whose time
  course defines the class (see `expression_curves` and the `synthetic` module docstring).

Geometry lives in face coordinates: origin at the face centre, x to the viewer's right,
y down, 1 unit = half the face height. Each point also has a depth used for yaw (a point at
depth z moves by z * sin(yaw) sideways, so features slide towards the turned side while the
rim barely moves and the face looks narrowed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

# 0-based labels, DFEW order (the CSVs store label + 1).
HAPPINESS, SADNESS, NEUTRAL, ANGER, SURPRISE, DISGUST, FEAR = range(7)

# Action-unit-like expression channels (FACS action units in brackets).
CHANNELS = (
    'brow_raise',  # inner + outer brow raiser, whole brow up (AU1+2)
    'brow_inner',  # inner brow raiser only: oblique, "worried" brows (AU1)
    'brow_lower',  # brow lowerer: brows down and drawn together (AU4)
    'eye_wide',  # upper lid raiser: eyes wide open (AU5)
    'lid_tighten',  # cheek raiser / lid tightener: eyes narrowed from below (AU6/7)
    'nose_wrinkle',  # nose wrinkler (AU9)
    'upper_lip',  # upper lip raiser: upper lip up, upper teeth shown (AU10)
    'smile',  # lip corner puller: corners up and out (AU12)
    'frown',  # lip corner depressor: corners down (AU15)
    'lip_press',  # lip pressor: lips thin and narrow (AU24)
    'jaw_drop',  # jaw drop: mouth open, chin down (AU26/27)
)
_CH = {name: i for i, name in enumerate(CHANNELS)}

# Single-event classes: the channels one onset-apex-offset event moves, with weights.
_SINGLE_EVENT = {
    HAPPINESS: {'smile': 1.0, 'lid_tighten': 0.6},
    SADNESS: {'brow_inner': 1.0, 'frown': 1.0},
    ANGER: {'brow_lower': 1.0, 'lip_press': 1.0, 'lid_tighten': 0.6},
    DISGUST: {'nose_wrinkle': 1.0, 'upper_lip': 1.0, 'brow_lower': 0.35, 'lid_tighten': 0.4},
}
# The surprise / fear pair: the same two events; surprise plays them in this order, fear in
# reverse (fear's curves are surprise's curves played backwards).
PAIR_EVENT_A = {'brow_raise': 1.0, 'eye_wide': 1.0}  # upper face: brows up, eyes wide
PAIR_EVENT_B = {'jaw_drop': 1.0}  # lower face: jaw drop

_SKIN_TONES = np.array(
    [
        (255, 224, 200),
        (240, 196, 168),
        (224, 172, 136),
        (198, 138, 102),
        (160, 108, 76),
        (120, 80, 56),
    ],
    np.float64,
)
_HAIR_COLORS = np.array(
    [(20, 16, 14), (50, 34, 24), (96, 62, 36), (170, 130, 80), (140, 60, 30), (150, 150, 150)],
    np.float64,
)
_IRIS_COLORS = np.array([(60, 40, 25), (90, 60, 30), (60, 100, 150), (70, 110, 70)], np.float64)


def _rgb(c) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in c)
    return r, g, b


# ---------------------------------------------------------------------------------------------
# Identity: everything that stays constant over a clip.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    face_scale: float  # face half-height as a fraction of the image size
    center: tuple[float, float]  # face centre offset from the image centre (fraction)
    aspect: float  # face half-width / half-height
    chin: float  # how much the lower face narrows towards the chin
    skin: tuple[int, int, int]
    hair_style: int  # 0 none, 1 short cap, 2 long, 3 cap with low hairline
    hair_color: tuple[int, int, int]
    hairline: float  # y of the hairline at the centre
    hair_side: float  # y where the hair ends at the temples
    eye_x: float  # eye centre distance from the midline (eye spacing)
    eye_y: float
    eye_w: float  # eye half-width
    eye_h: float  # eye half-height when relaxed
    iris: tuple[int, int, int]
    brow_gap: float  # brow height above the eye
    brow_thick: float
    brow_arch: float
    brow_color: tuple[int, int, int]
    nose_y: float  # y of the nostrils
    mouth_y: float
    mouth_w: float  # mouth half-width (relaxed)
    lip_color: tuple[int, int, int]
    lip_up: float  # upper lip thickness
    lip_lo: float  # lower lip thickness
    glasses: bool
    clothes: tuple[int, int, int]
    background: tuple  # (style, colour 1, colour 2, extra)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draws a random face identity and background."""
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(tone)
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin = _SKIN_TONES[lo] + (tone - lo) * (_SKIN_TONES[hi] - _SKIN_TONES[lo])
    skin = skin * rng.uniform(0.95, 1.05, 3)
    hair = _HAIR_COLORS[rng.integers(len(_HAIR_COLORS))] * rng.uniform(0.85, 1.15)
    aspect = rng.uniform(0.72, 0.86)
    eye_w = aspect * rng.uniform(0.16, 0.19)
    hair_style = int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2]))
    # Brows stay clearly darker than the skin whatever the hair colour (grey, blond):
    # their movement is a large part of the class signal.
    brow_color = np.minimum(hair * 0.65, skin * 0.4)
    # Lips: a darker, redder version of the skin, so they contrast on every tone.
    lip = skin * 0.6 + np.array([70.0, 10.0, 15.0])

    bg_style = int(rng.integers(3))
    bg1 = rng.uniform(20, 235, 3)
    bg2 = rng.uniform(20, 235, 3)
    bg_extra = tuple(rng.uniform(0, 1, 4))
    return Identity(
        face_scale=rng.uniform(0.40, 0.44),
        center=(rng.uniform(-0.03, 0.03), rng.uniform(0.0, 0.03)),
        aspect=aspect,
        chin=rng.uniform(0.1, 0.35),
        skin=_rgb(skin),
        hair_style=hair_style,
        hair_color=_rgb(hair),
        hairline=rng.uniform(-0.85, -0.7) if hair_style != 3 else rng.uniform(-0.72, -0.66),
        hair_side=rng.uniform(-0.45, -0.05),
        eye_x=aspect * rng.uniform(0.40, 0.48),
        eye_y=rng.uniform(-0.15, -0.09),
        eye_w=eye_w,
        eye_h=rng.uniform(0.055, 0.07),
        iris=_rgb(_IRIS_COLORS[rng.integers(len(_IRIS_COLORS))]),
        brow_gap=rng.uniform(0.17, 0.21),
        brow_thick=rng.uniform(0.07, 0.095),
        brow_arch=rng.uniform(0.0, 0.05),
        brow_color=_rgb(brow_color),
        nose_y=rng.uniform(0.22, 0.27),
        mouth_y=rng.uniform(0.50, 0.56),
        mouth_w=aspect * rng.uniform(0.30, 0.40),
        lip_color=_rgb(lip),
        lip_up=rng.uniform(0.045, 0.06),
        lip_lo=rng.uniform(0.06, 0.08),
        glasses=bool(rng.uniform() < 0.15),
        clothes=_rgb(rng.uniform(20, 235, 3)),
        background=(bg_style, _rgb(bg1), _rgb(bg2), bg_extra),
    )


# ---------------------------------------------------------------------------------------------
# Nuisances over time.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """Per-frame nuisance parameters (arrays of length num_frames) and per-clip constants."""

    tx: np.ndarray  # head translation, fraction of the image size
    ty: np.ndarray
    roll: np.ndarray  # in-plane rotation, radians
    yaw: np.ndarray  # out-of-plane rotation, radians
    scale: np.ndarray  # zoom factor
    blink: np.ndarray  # 0 open .. 1 closed
    occluded: np.ndarray  # bool: occluder drawn in this frame
    occluder: tuple  # (kind, params...) or ()
    gain: np.ndarray  # global brightness factor
    light: np.ndarray  # side-light strength (multiplies a linear ramp)
    light_angle: float
    contrast: float
    color_gain: tuple[float, float, float]
    noise: float  # Gaussian sensor-noise sigma, grey levels


def _smooth_path(rng: np.random.Generator, u: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random trajectory over normalised time: two random-phase sinusoids."""
    f = rng.uniform(0.3, 1.5, 2)
    phase = rng.uniform(0, 2 * math.pi, 2)
    w = rng.uniform(0.5, 1.0, 2)
    path = w[0] * np.sin(2 * math.pi * f[0] * u + phase[0]) + w[1] * np.sin(
        2 * math.pi * f[1] * u + phase[1]
    )
    return amplitude * path / (w[0] + w[1])


def sample_nuisance(rng: np.random.Generator, num_frames: int, difficulty: float) -> Nuisance:
    """Draws nuisance trajectories; `difficulty` scales them (0 = none, 1 = default)."""
    d = difficulty
    n = num_frames
    u = (np.arange(n) + 0.5) / n
    tx = rng.uniform(-0.02, 0.02) * d + _smooth_path(rng, u, rng.uniform(0, 0.05) * d)
    ty = rng.uniform(-0.015, 0.015) * d + _smooth_path(rng, u, rng.uniform(0, 0.035) * d)
    roll = math.radians(rng.uniform(-7, 7) * d) + _smooth_path(
        rng, u, math.radians(rng.uniform(0, 6) * d)
    )
    # Non-frontal pose: a constant yaw of up to ~23 degrees plus a slow turn.
    yaw = rng.uniform(-0.4, 0.4) * d + _smooth_path(rng, u, rng.uniform(0, 0.15) * d)
    scale = 1 + rng.uniform(-0.04, 0.04) * d + _smooth_path(rng, u, rng.uniform(0, 0.04) * d)

    blink = np.zeros(n)
    for _ in range(rng.poisson(d * n / 40)):
        c = rng.uniform(0, n)
        blink = np.maximum(blink, np.clip(1.25 - np.abs(np.arange(n) - c) / 1.2, 0, 1))

    occluded = np.zeros(n, bool)
    occluder: tuple = ()
    # Occlusion: in a minority of clips, for a short window (at most ~20% of the frames).
    if rng.uniform() < min(1.0, 0.35 * d):
        length = max(1, round(rng.uniform(0.08, 0.2) * n))
        start = int(rng.integers(0, n - length + 1))
        occluded[start : start + length] = True
        if rng.uniform() < 0.5:
            horizontal = rng.uniform() < 0.7
            occluder = (
                'bar',
                horizontal,
                rng.uniform(-0.3, 0.7),  # position across the bar (y if horizontal)
                rng.uniform(-0.4, 0.4),  # position along the bar
                rng.uniform(0.18, 0.3),  # thickness
                rng.uniform(0.9, 1.6),  # length
                _rgb(rng.uniform(0, 255, 3)),
            )
        else:
            tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.9, 1.05)
            occluder = (
                'hand',
                rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.6),  # x of the palm
                rng.uniform(0.45, 0.8),  # y of the palm
                rng.uniform(-0.5, 0.5),  # tilt
                _rgb(tone),
                start,
                length,
            )

    gain = (1 + rng.uniform(-0.25, 0.12) * d) * (
        1 + rng.uniform(-0.2, 0.2) * d * (u - 0.5) + _smooth_path(rng, u, 0.05 * d)
    )
    light = rng.uniform(0, 0.35) * d + rng.uniform(-0.2, 0.2) * d * (u - 0.5)
    return Nuisance(
        tx=tx,
        ty=ty,
        roll=roll,
        yaw=yaw,
        scale=scale,
        blink=blink,
        occluded=occluded,
        occluder=occluder,
        gain=gain,
        light=light,
        light_angle=rng.uniform(0, 2 * math.pi),
        contrast=1 + rng.uniform(-0.2, 0.05) * d,
        color_gain=tuple(1 + rng.uniform(-0.06, 0.06, 3) * d),
        noise=rng.uniform(0, 4) * d,
    )


# ---------------------------------------------------------------------------------------------
# Expression dynamics: the class signal.
# ---------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def envelope(u: np.ndarray, t0: float, t1: float, t2: float, t3: float) -> np.ndarray:
    """Onset (t0 -> t1), apex (t1 -> t2), offset (t2 -> t3) over normalised time u."""
    rise = _smoothstep((u - t0) / max(t1 - t0, 1e-6))
    fall = 1 - _smoothstep((u - t2) / max(t3 - t2, 1e-6))
    return np.minimum(rise, fall)


def _add_event(out: np.ndarray, channels: dict, env: np.ndarray, rng: np.random.Generator):
    amplitude = rng.uniform(0.7, 1.0)
    for name, weight in channels.items():
        out[:, _CH[name]] += weight * amplitude * rng.uniform(0.9, 1.1) * env


def expression_curves(label: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame expression intensities, shape (num_frames, len(CHANNELS)), float32.

    Event phases are fractions of the clip (so the dynamics span the clip whatever its
    length) with random jitter. Every class gets the same small idle wobble on every channel.
    """
    n = num_frames
    u = (np.arange(n) + 0.5) / n  # symmetric: reversing the frames maps u to 1 - u
    out = np.zeros((n, len(CHANNELS)))
    if label in _SINGLE_EVENT:
        t0 = rng.uniform(0.0, 0.2)
        t1 = t0 + rng.uniform(0.1, 0.25)
        t2 = rng.uniform(0.6, 0.85)
        t3 = t2 + rng.uniform(0.1, 0.25)
        _add_event(out, _SINGLE_EVENT[label], envelope(u, t0, t1, t2, t3), rng)
    elif label in (SURPRISE, FEAR):
        # Event A in the first ~half, event B in the second ~half, overlapping in the middle.
        a0 = rng.uniform(0.0, 0.08)
        a1 = a0 + rng.uniform(0.08, 0.15)
        a2 = rng.uniform(0.4, 0.55)
        a3 = a2 + rng.uniform(0.08, 0.15)
        b0 = rng.uniform(0.35, 0.5)
        b1 = b0 + rng.uniform(0.08, 0.15)
        b2 = rng.uniform(0.85, 1.0)
        b3 = b2 + rng.uniform(0.05, 0.15)
        _add_event(out, PAIR_EVENT_A, envelope(u, a0, a1, a2, a3), rng)
        _add_event(out, PAIR_EVENT_B, envelope(u, b0, b1, b2, b3), rng)
    elif label != NEUTRAL:
        raise ValueError(f'label must be in 0..6, got {label}')
    # Idle wobble (nuisance shared by all classes, neutral included): tiny and slow.
    f = rng.uniform(0.5, 2.0, len(CHANNELS))
    phase = rng.uniform(0, 2 * math.pi, len(CHANNELS))
    out += 0.03 * np.sin(2 * math.pi * f * u[:, None] + phase)
    if label == FEAR:
        # Fear = surprise played backwards: jaw drop first, then brows up / eyes wide.
        out = out[::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Drawing.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clip:
    identity: Identity
    nuisance: Nuisance
    expression: np.ndarray  # (num_frames, len(CHANNELS))
    noise_seed: np.random.SeedSequence


def clip_seeds(seed: int, clip_id: int) -> list[np.random.SeedSequence]:
    """Independent seed streams of one clip: identity, nuisance, expression, pixel noise."""
    return np.random.SeedSequence(seed, spawn_key=(clip_id,)).spawn(4)


def sample_clip(
    label: int, num_frames: int, *, seed: int, clip_id: int, difficulty: float = 1.0
) -> Clip:
    """Everything needed to render one clip; deterministic in (seed, clip_id, label, ...)."""
    s_id, s_nuis, s_expr, s_noise = clip_seeds(seed, clip_id)
    return Clip(
        identity=sample_identity(np.random.default_rng(s_id)),
        nuisance=sample_nuisance(np.random.default_rng(s_nuis), num_frames, difficulty),
        expression=expression_curves(label, num_frames, np.random.default_rng(s_expr)),
        noise_seed=s_noise,
    )


def _supersample(image_size: int) -> int:
    # Draw at >= ~144 px and box-downsample: cheap anti-aliasing for polygons and lines.
    return max(2, min(6, math.ceil(144 / image_size)))


def _background(idt: Identity, w: int) -> Image.Image:
    style, c1, c2, extra = idt.background
    img = Image.new('RGB', (w, w), c1)
    if style == 1:  # linear gradient
        t = np.linspace(0, 1, w)[:, None, None]
        arr = np.asarray(c1, np.float64) * (1 - t) + np.asarray(c2, np.float64) * t
        arr = np.broadcast_to(arr, (w, w, 3))
        if extra[0] < 0.5:
            arr = arr.transpose(1, 0, 2)
        img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    elif style == 2:  # a room-like backdrop: a wall and a door / window panel
        draw = ImageDraw.Draw(img)
        x0 = int(extra[0] * 0.7 * w)
        y0 = int(extra[1] * 0.5 * w)
        draw.rectangle([x0, y0, x0 + int((0.2 + 0.3 * extra[2]) * w), w], fill=c2)
        draw.rectangle([0, int((0.75 + 0.2 * extra[3]) * w), w, w], fill=_rgb(np.asarray(c1) * 0.7))
    return img


@functools.lru_cache(maxsize=64)
def _unit_arc(n: int, a0: float, a1: float) -> np.ndarray:
    a = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-9)
    return np.stack([np.cos(a), np.sin(a)], 1)


def _arc(cx, cy, rx, ry, n=20, a0=0.0, a1=2 * math.pi) -> np.ndarray:
    """Points of an ellipse (or of an arc of it, angles a0..a1)."""
    return _unit_arc(n, a0, a1) * (rx, ry) + (cx, cy)


def _shade(color, factor: float) -> tuple[int, int, int]:
    return _rgb(v * factor for v in color)


def _mix(c1, c2, t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, float(t)))
    return _rgb(a * (1 - t) + b * t for a, b in zip(c1, c2, strict=True))


# Depth of a point for yaw, by kind: features lie on a rounded front surface, the nose
# sticks out, the rim and the hair barely move, the ears sit behind; flat shapes (body,
# occluders) only follow the head's translation. depth = scale * surface(x) + offset.
_KINDS = ('surface', 'nose', 'rim', 'ear', 'flat')
_DEPTH_SCALE = np.array([1.0, 1.0, 0.05, 0.0, 0.0])
_DEPTH_OFFSET = np.array([0.0, 0.3, 0.0, -0.3, 0.0])
_FLAT = _KINDS.index('flat')


class _Shapes:
    """Collects shapes in face coordinates; transforms them all at once, then draws."""

    def __init__(self, *parts: _Shapes):
        # (is polygon, points, kind index, colour, line width in face units)
        self.items = [it for part in parts for it in part.items]

    def poly(self, pts, color, kind='surface'):
        self.items.append((True, np.asarray(pts, np.float64), _KINDS.index(kind), color, 0.0))

    def line(self, pts, color, width, kind='surface'):
        self.items.append((False, np.asarray(pts, np.float64), _KINDS.index(kind), color, width))

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        idt: Identity,
        pose: dict,
        w: int,
        fill: int | None = None,
    ):
        """Draws every shape in its colour, or all in `fill` (a mask on an 'L' image)."""
        if not self.items:
            return
        sizes = [len(it[1]) for it in self.items]
        pts = np.concatenate([it[1] for it in self.items])
        kind = np.repeat([it[2] for it in self.items], sizes)
        x, y = pts[:, 0], pts[:, 1]
        surface = 0.55 * np.sqrt(np.clip(1 - (x / (idt.aspect * 1.1)) ** 2, 0, 1))
        z = _DEPTH_SCALE[kind] * surface + _DEPTH_OFFSET[kind]
        head = kind != _FLAT
        yaw, roll = pose['yaw'] * head, pose['roll'] * head
        x1 = x * np.cos(yaw) + z * np.sin(yaw)
        x2 = x1 * np.cos(roll) - y * np.sin(roll)
        y2 = x1 * np.sin(roll) + y * np.cos(roll)
        b = idt.face_scale * w * pose['scale']
        cx = w * (0.5 + idt.center[0] + pose['tx'])
        cy = w * (0.5 + idt.center[1] + pose['ty'])
        # PIL takes flat [x0, y0, x1, y1, ...] lists.
        flat = np.stack([cx + b * x2, cy + b * y2], 1).ravel().tolist()
        start = 0
        for (is_poly, _, _, color, width), n in zip(self.items, sizes, strict=True):
            xy = flat[start : start + 2 * n]
            start += 2 * n
            color = color if fill is None else fill
            if is_poly:
                draw.polygon(xy, fill=color)
            else:
                draw.line(xy, fill=color, width=max(1, round(width * b)), joint='curve')


_LID_K = np.linspace(-1, 1, 11)
_LID_BUMP = (1 - _LID_K**2) ** 0.8
_MOUTH_K = np.linspace(-1, 1, 15)
_MOUTH_BUMP = (1 - _MOUTH_K**2) ** 0.5
_OUTLINE_ANGLES = np.linspace(0, 2 * math.pi, 40, endpoint=False)
_OUTLINE_LOWER = np.clip(np.sin(_OUTLINE_ANGLES), 0, None)  # > 0 on the lower half


def _band(x, y_top, y_bottom) -> np.ndarray:
    """Polygon between two curves sampled at the same x (left to right on top)."""
    return np.concatenate([np.stack([x, y_top], 1), np.stack([x, y_bottom], 1)[::-1]])


def _clamp_to_eye(pts, ex, ey, ew, h_up, h_lo):
    """Clamps points (iris, pupil) vertically between the lids: the visible part."""
    k = np.clip((pts[:, 0] - ex) / ew, -1, 1)
    bump = (1 - k**2) ** 0.8
    y = np.clip(pts[:, 1], ey - h_up * bump, ey + h_lo * bump)
    return np.stack([pts[:, 0], y], 1)


def _static_shapes(idt: Identity) -> tuple[_Shapes, _Shapes]:
    """The shapes no expression moves: behind the face, and in front of it."""
    back, front = _Shapes(), _Shapes()
    A = idt.aspect
    # Body: neck and shoulders, following the head's translation only.
    neck = [(-0.33 * A, 0.3), (0.33 * A, 0.3), (0.36 * A, 1.5), (-0.36 * A, 1.5)]
    back.poly(neck, _shade(idt.skin, 0.82), 'flat')
    back.poly(_arc(0, 2.1, 1.5, 0.8, 24), idt.clothes, 'flat')
    if idt.hair_style == 2:  # long hair, behind the head
        top = _arc(0, 0, A * 1.2, 1.12, 16, math.pi, 2 * math.pi)
        back.poly([(-A * 1.3, 1.15), *top, (A * 1.3, 1.15)], idt.hair_color, 'rim')
    for sx in (-1, 1):
        back.poly(_arc(sx * A * 0.98, -0.02, 0.1, 0.17, 12), _shade(idt.skin, 0.93), 'ear')

    if idt.glasses:
        frame = (25, 25, 30)
        for sx in (-1, 1):
            rim = _arc(sx * idt.eye_x, idt.eye_y, idt.eye_w * 1.45, idt.eye_w * 1.15, 20)
            front.line([*rim, rim[0], rim[1]], frame, 0.03)
        bridge_x = idt.eye_x - idt.eye_w * 1.45
        front.line([(-bridge_x, idt.eye_y - 0.03), (bridge_x, idt.eye_y - 0.03)], frame, 0.03)
    if idt.hair_style in (1, 2, 3):  # a cap over the top of the head down to the hairline
        top = _arc(0, 0, A * 1.07, 1.07, 18, math.pi, 2 * math.pi)
        top = top[top[:, 1] <= idt.hair_side + 1e-9]
        hx = np.linspace(A * 1.02, -A * 1.02, 15)
        hy = idt.hairline + (idt.hair_side - idt.hairline) * (np.abs(hx) / (A * 1.02)) ** 6
        side = idt.hair_side
        cap = [[(-A * 1.07, side)], top, [(A * 1.07, side)], np.stack([hx, hy], 1)]
        front.poly(np.concatenate(cap), idt.hair_color, 'rim')
    return back, front


def _face_shapes(idt: Identity, e: np.ndarray, blink: float) -> _Shapes:
    """The shapes of the face that expressions move, for expression vector e: the face
    outline first, then the features drawn on it (see `render_masks`)."""
    g = dict(zip(CHANNELS, e.tolist(), strict=True))
    s = _Shapes()
    A = idt.aspect
    skin = idt.skin
    dark = _shade(skin, 0.55)

    # Face outline: the chin drops with the jaw. It must stay the first shape.
    fx = A * np.cos(_OUTLINE_ANGLES) * (1 - idt.chin * _OUTLINE_LOWER**3)
    fy = np.sin(_OUTLINE_ANGLES) * np.where(_OUTLINE_LOWER > 0, 1 + 0.1 * g['jaw_drop'], 1.0)
    s.poly(np.stack([fx, fy], 1), skin, 'rim')

    # Cheeks: rosier and higher with a smile (cheek raise).
    cheek = _mix(skin, (230, 110, 110), 0.12 + 0.25 * max(g['smile'], 0))
    cheek_y = idt.eye_y + 0.3 - 0.08 * g['smile']
    for sx in (-1, 1):
        s.poly(_arc(sx * (idt.eye_x + 0.03), cheek_y, 0.12, 0.09, 12), cheek)

    # Mouth geometry (needed by the nasolabial folds too).
    w = idt.mouth_w * (
        1 + 0.25 * g['smile'] - 0.18 * g['jaw_drop'] - 0.35 * g['lip_press'] + 0.1 * g['upper_lip']
    )
    my = idt.mouth_y
    corner_y = my - 0.18 * g['smile'] + 0.18 * g['frown'] - 0.02 * g['upper_lip']
    # Nasolabial folds: deepen with a smile or a raised upper lip.
    fold = max(g['smile'], g['upper_lip'], 0.0)
    if fold > 0.1:
        for sx in (-1, 1):
            ends = [(sx * 0.12, idt.nose_y - 0.03), (sx * (w + 0.05), corner_y + 0.02)]
            s.line(ends, _mix(skin, dark, fold), 0.035)

    # Nose: shading, tip, nostrils; the wrinkle / upper-lip raise lifts it.
    ny = idt.nose_y - 0.05 * g['nose_wrinkle'] - 0.03 * g['upper_lip']
    s.poly([(0, idt.eye_y + 0.02), (-0.1, ny + 0.01), (0.1, ny + 0.01)], _shade(skin, 0.92), 'nose')
    s.poly(_arc(0, ny - 0.03, 0.085, 0.05, 12), _shade(skin, 0.97), 'nose')
    for sx in (-1, 1):
        s.poly(_arc(sx * 0.055, ny + 0.01, 0.035, 0.02, 8), _shade(skin, 0.45), 'nose')
    if g['nose_wrinkle'] > 0.1:
        c = _mix(skin, dark, g['nose_wrinkle'])
        for wy in (idt.eye_y + 0.01, idt.eye_y + 0.07, idt.eye_y + 0.13):
            s.line([(-0.1, wy), (0.0, wy - 0.02), (0.1, wy)], c, 0.035, 'nose')

    # Eyes: sclera, iris and pupil clipped between the lids, upper lid line.
    open_ = 1 - min(1.0, max(0.0, float(blink)))
    h_up = idt.eye_h * max(0.0, 1 + 1.7 * g['eye_wide'] - 0.45 * g['lid_tighten']) * open_
    h_lo = idt.eye_h * max(0.0, 1 + 1.0 * g['eye_wide'] - 0.9 * g['lid_tighten']) * open_
    r = idt.eye_w * 0.5
    for sx in (-1, 1):
        ex, ey = sx * idt.eye_x, idt.eye_y
        x = ex + idt.eye_w * _LID_K
        upper = ey - h_up * _LID_BUMP
        if h_up + h_lo > 0.01:
            s.poly(_band(x, upper, ey + h_lo * _LID_BUMP), (236, 236, 230))
            iris = _clamp_to_eye(_arc(ex, ey, r, r, 14), ex, ey, idt.eye_w, h_up, h_lo)
            s.poly(iris, idt.iris)
            pupil = _clamp_to_eye(
                _arc(ex, ey, r * 0.45, r * 0.45, 10), ex, ey, idt.eye_w, h_up, h_lo
            )
            s.poly(pupil, (15, 12, 12))
        s.line(np.stack([x, upper], 1), (30, 22, 20), 0.035)

    # Brows: inner, middle, outer points, each moved by the brow channels.
    by = idt.eye_y - idt.brow_gap
    raise_ = -0.24 * g['brow_raise']
    yi = by + raise_ - 0.21 * g['brow_inner'] + 0.15 * g['brow_lower']
    ym = by - idt.brow_arch + raise_ - 0.09 * g['brow_inner'] + 0.09 * g['brow_lower']
    yo = by + 0.02 + raise_ + 0.04 * g['brow_inner'] + 0.02 * g['brow_lower']
    xi = idt.eye_x - 0.75 * idt.eye_w - 0.09 * g['brow_lower'] - 0.02 * g['brow_inner']
    xm, xo = idt.eye_x, idt.eye_x + 0.95 * idt.eye_w
    for sx in (-1, 1):
        s.line([(sx * xi, yi), (sx * xm, ym), (sx * xo, yo)], idt.brow_color, idt.brow_thick)
    # Glabella furrows when the brows are pulled down and together.
    if g['brow_lower'] > 0.15:
        c = _mix(skin, dark, g['brow_lower'])
        for sx in (-1, 1):
            s.line([(sx * 0.05, by + 0.02), (sx * 0.04, by + 0.13)], c, 0.03)

    # Mouth: lips, opening, upper teeth; curves through the corners and the lip centres.
    y_ui = my - 0.17 * g['upper_lip'] - 0.02 * g['smile']
    y_li = my + 0.4 * max(g['jaw_drop'], 0) + 0.15 * max(g['smile'], 0) + 0.02 * g['upper_lip']
    y_li = max(y_li, y_ui)
    p_up = max(0.25, 0.8 - 0.5 * g['upper_lip'])  # a raised upper lip is boxy

    def inner(k):
        up = corner_y + (y_ui - corner_y) * (1 - k**2) ** p_up
        # The lower curve never crosses the upper one: a closed mouth stays closed.
        return up, np.maximum(corner_y + (y_li - corner_y) * (1 - k**2) ** 0.6, up)

    mx = w * _MOUTH_K
    in_up, in_lo = inner(_MOUTH_K)
    press = min(1.0, max(0.0, g['lip_press']))
    thin = 1 - 0.75 * press
    out_up = in_up - idt.lip_up * thin * _MOUTH_BUMP
    out_lo = in_lo + idt.lip_lo * thin * _MOUTH_BUMP
    s.poly(_band(mx, out_up, out_lo), idt.lip_color)
    opening = y_li - y_ui
    if opening > 0.02:
        s.poly(_band(mx, in_up, in_lo), (70, 18, 24))
    if opening > 0.04:
        t_up, t_lo = inner(0.8 * _MOUTH_K)
        teeth = np.minimum(t_up + min(0.06, 0.5 * opening) * _MOUTH_BUMP, t_lo)
        s.poly(_band(0.8 * mx, t_up, teeth), (238, 236, 226))
    else:
        # The line between the lips: a pressed mouth is a thick dark line.
        line = _mix(_shade(idt.lip_color, 0.55), (35, 15, 15), press)
        s.line(np.stack([mx, (in_up + in_lo) / 2], 1), line, 0.025 + 0.035 * press)
    return s


def _occluder_shapes(nuis: Nuisance, frame: int) -> _Shapes:
    s = _Shapes()
    occ = nuis.occluder
    if occ[0] == 'bar':
        _, horizontal, across, along, thick, length, color = occ
        x0, x1 = along - length / 2, along + length / 2
        y0, y1 = across - thick / 2, across + thick / 2
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        if not horizontal:
            pts = [(y, x) for x, y in pts]
        s.poly(pts, color, 'flat')
    else:
        _, hx, hy, tilt, color, start, length = occ
        # The hand slides in from below, stays, and slides out (symmetric in time, as every
        # nuisance is, so that a reversed clip is as likely as the clip itself).
        t = min(1.0, min(frame - start + 1, start + length - frame) / max(1.0, length / 3))
        hy = hy + 0.8 * (1 - t)
        palm = _arc(hx, hy + 0.3, 0.26, 0.3, 16)
        s.poly(palm, color, 'flat')
        for i, fxo in enumerate((-0.18, -0.06, 0.06, 0.18)):
            fx = hx + fxo + tilt * 0.1
            flen = 0.22 if i in (1, 2) else 0.18
            s.poly(_arc(fx, hy + 0.05 - flen * 0.6, 0.055, flen, 10), color, 'flat')
        s.line([(hx - 0.15, hy + 0.25), (hx + 0.12, hy + 0.28)], _shade(color, 0.8), 0.02, 'flat')
    return s


def _pose(nuis: Nuisance, frame: int) -> dict[str, float]:
    """The head pose of `frame`, as the shape drawing takes it."""
    return {k: getattr(nuis, k)[frame] for k in ('tx', 'ty', 'roll', 'yaw', 'scale')}


def render_clip(clip: Clip, image_size: int) -> Iterator[np.ndarray]:
    """Yields the clip's frames as uint8 arrays of shape (image_size, image_size, 3)."""
    idt, nuis = clip.identity, clip.nuisance
    ss = _supersample(image_size)
    w = image_size * ss
    bg = _background(idt, w)
    noise_rng = np.random.default_rng(clip.noise_seed)
    # Illumination: a linear side-light ramp along a random direction.
    coords = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    ramp = (
        math.cos(nuis.light_angle) * coords[None, :] + math.sin(nuis.light_angle) * coords[:, None]
    )
    color_gain = np.asarray(nuis.color_gain, np.float32)
    back, front = _static_shapes(idt)
    for i in range(len(clip.expression)):
        pose = _pose(nuis, i)
        img = bg.copy()
        shapes = _Shapes(back, _face_shapes(idt, clip.expression[i], nuis.blink[i]), front)
        if nuis.occluded[i]:
            shapes = _Shapes(shapes, _occluder_shapes(nuis, i))
        shapes.draw(ImageDraw.Draw(img), idt, pose, w)
        arr = np.asarray(img.reduce(ss), np.float32)
        # Contrast about mid-grey, then brightness x side light x colour cast, then noise.
        light = (nuis.gain[i] * (1 + nuis.light[i] * ramp)).astype(np.float32)[:, :, None]
        arr = ((arr - 128) * nuis.contrast + 128) * (light * color_gain)
        if nuis.noise > 0:
            arr += nuis.noise * noise_rng.standard_normal(arr.shape, np.float32)
        yield np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# The ground-truth regions `render_masks` draws.
MASK_NAMES = ('face', 'features', 'occluder')


def render_masks(
    clip: Clip, image_size: int, frames: list[int] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yields, per frame (all, or the 0-based `frames`), where `render_clip` drew what.

    Each frame's dict maps `MASK_NAMES` to float32 [image_size, image_size] coverage in
    [0, 1] (the fraction of a pixel's supersampled area), drawn with the frame's pose:
    'face' the face outline (skin, including what hair, glasses or the occluder cover),
    'features' the shapes expressions move (brows, eyes, nose, mouth, cheeks, folds and
    furrows), 'occluder' the bar or hand (all zero in unoccluded frames). Nothing here
    touches a random stream: the frames `render_clip` yields are the same with or without.
    """
    idt, nuis = clip.identity, clip.nuisance
    ss = _supersample(image_size)
    w = image_size * ss
    for i in range(len(clip.expression)) if frames is None else frames:
        pose = _pose(nuis, i)
        face = _face_shapes(idt, clip.expression[i], nuis.blink[i])
        outline, features = _Shapes(), _Shapes()
        outline.items, features.items = face.items[:1], face.items[1:]
        occluder = _occluder_shapes(nuis, i) if nuis.occluded[i] else _Shapes()
        masks = {}
        for name, shapes in zip(MASK_NAMES, (outline, features, occluder), strict=True):
            img = Image.new('L', (w, w), 0)
            shapes.draw(ImageDraw.Draw(img), idt, pose, w, fill=255)
            masks[name] = np.asarray(img.reduce(ss), np.float32) / 255.0
        yield masks
