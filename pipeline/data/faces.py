"""Cartoon face renderer for the synthetic mini-Aff-Wild2 (see synth.py for the hidden state).

A face is a set of filled polygons drawn with PIL in *face units* (origin at the face centre, x to
the right, y down, 1 = half the face width) and mapped to pixels by one similarity transform per
frame (head roll, translation, scale) plus a small yaw/pitch shift of the inner features. The
canvas is drawn at ``supersample`` times the output size and box-reduced, so that small outputs
(img_size 32-64) keep sub-pixel detail. Each of the 12 ABAW action units moves the part the FACS
manual names (Ekman & Friesen), valence bends the mouth and arousal opens the eyes; lighting,
sensor noise, blur and occluders are applied after drawing, so one frame alone is ambiguous.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN_LIGHT = np.array([241.0, 200.0, 170.0])
SKIN_DARK = np.array([88.0, 56.0, 40.0])
HAIR_COLOURS = ((28, 24, 22), (70, 45, 28), (120, 80, 45), (196, 164, 108), (150, 146, 140),
                (130, 58, 30))
IRIS_COLOURS = ((70, 45, 25), (40, 30, 22), (70, 110, 150), (80, 110, 70))
SCLERA = (236, 234, 228)
MOUTH_INSIDE = (70, 22, 28)
TEETH = (226, 220, 204)

_ANGLES = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)  # (24, 2)
_ARC = np.linspace(-1.0, 1.0, 11)


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one person: shape, colours, expressiveness, accessories."""

    skin: tuple[float, float, float]
    hair: tuple[int, int, int]
    hair_style: int  # 0 short, 1 long, 2 shaved
    fringe: float  # how far the fringe comes down over the forehead, 0 = none
    iris: tuple[int, int, int]
    scale: float  # face half-width in units of 0.3 * img_size
    face_ratio: float  # half-height / half-width
    eye_size: float
    eye_open: float  # resting eye openness: arousal is read relative to this
    brow_offset: float
    brow_thickness: float
    mouth_width: float
    lip_thickness: float
    mouth_curve: float  # resting mouth-corner height: valence is read relative to this
    valence_gain: float
    au_gain: tuple[float, ...]  # (12,) how strongly this person shows each AU
    blush: float
    beard: float  # 0 = none
    glasses: bool


@dataclass(frozen=True)
class Scene:
    """What stays fixed for one source video: background, light and camera."""

    texture_seed: int
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    light_dir: tuple[float, float]
    light_strength: float
    colour_cast: tuple[float, float, float]
    noise_sigma: float
    jpeg_quality: int


@dataclass(frozen=True)
class FrameParams:
    """Everything that changes per frame; ``au`` holds the 12 ABAW AU intensities (about 0..1.2)."""

    valence: float
    arousal: float
    au: np.ndarray  # (12,) in AU_NAMES order: 1 2 4 6 7 10 12 15 23 24 25 26
    dx: float  # head offset, face units
    dy: float
    roll: float  # radians
    yaw: float  # about -1..1, shifts the inner features sideways
    pitch: float
    blink: float  # 0 open .. 1 closed
    gaze: tuple[float, float]
    talk: float  # extra mouth opening from speech, face units
    gain: float  # brightness
    blur: float  # Gaussian blur radius in output pixels, 0 = sharp
    # cx, cy, rx, ry as fractions of the image side, and a colour; None = nothing in front of the
    # face
    occluder: tuple[float, float, float, float, tuple[int, int, int]] | None


def sample_identity(rng: np.random.Generator) -> Identity:
    tone = rng.beta(1.4, 1.4)
    skin = (1 - tone) * SKIN_LIGHT + tone * SKIN_DARK
    skin = skin * rng.uniform(0.95, 1.05, 3)
    style = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
    return Identity(
        skin=tuple(float(c) for c in np.clip(skin, 30, 250).round(1)),
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        hair_style=style,
        fringe=float(rng.uniform(0.0, 0.35)) if style != 2 and rng.random() < 0.5 else 0.0,
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        scale=float(rng.uniform(0.9, 1.08)),
        face_ratio=float(rng.uniform(1.2, 1.42)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        eye_open=float(rng.uniform(0.75, 1.2)),
        brow_offset=float(rng.uniform(-0.05, 0.05)),
        brow_thickness=float(rng.uniform(0.045, 0.09)),
        mouth_width=float(rng.uniform(0.85, 1.15)),
        lip_thickness=float(rng.uniform(0.75, 1.3)),
        mouth_curve=float(rng.normal(0.0, 0.02)),
        valence_gain=float(rng.uniform(0.6, 1.4)),
        au_gain=tuple(float(g) for g in rng.uniform(0.55, 1.2, 12).round(3)),
        blush=float(rng.uniform(0.0, 0.3)),
        beard=float(rng.uniform(0.3, 0.8)) if rng.random() < 0.15 else 0.0,
        glasses=bool(rng.random() < 0.15),
    )


def sample_scene(rng: np.random.Generator) -> Scene:
    base = rng.integers(20, 236, 3)
    other = np.clip(base + rng.integers(-70, 71, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    return Scene(
        texture_seed=int(rng.integers(2**31)),
        background=(tuple(int(c) for c in base), tuple(int(c) for c in other)),
        light_dir=(float(np.cos(angle)), float(np.sin(angle))),
        light_strength=float(rng.uniform(0.0, 0.35)),
        colour_cast=tuple(float(c) for c in rng.uniform(0.88, 1.12, 3).round(3)),
        noise_sigma=float(rng.uniform(2.0, 9.0)),
        jpeg_quality=int(rng.integers(70, 96)),
    )


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return _CIRCLE * (rx, ry) + (cx, cy)  # (24, 2)


def _band(top: np.ndarray, thickness: float) -> np.ndarray:
    """A stroke of the given thickness below a polyline (K, 2) -> closed polygon (2K, 2)."""
    return np.concatenate([top, (top + (0.0, thickness))[::-1]])


def _mix(a, b, w: float) -> tuple[int, int, int]:
    w = min(max(w, 0.0), 1.0)
    return tuple(int(round((1 - w) * x + w * y)) for x, y in zip(a, b))


class FaceRenderer:
    """Draws one person in one scene; ``render`` turns FrameParams into an (S, S, 3) uint8 image.

    Args:
        identity: the person.
        scene: background, light, camera noise.
        img_size: output side S in pixels.
    """

    def __init__(self, identity: Identity, scene: Scene, img_size: int):
        self.identity = identity
        self.scene = scene
        self.size = img_size
        self.supersample = 1 if img_size >= 192 else max(2, -(-160 // img_size))
        self.canvas = img_size * self.supersample
        self.margin = int(0.15 * self.canvas)
        self.background = Image.fromarray(self._background())
        self.light = self._light()
        # Sensor noise is cut at a random offset from a bank twice the image side: drawing fresh
        # Gaussian noise every frame costs more than all the drawing.
        noise_rng = np.random.default_rng(self.scene.texture_seed + 1)
        self.noise = noise_rng.standard_normal((2 * img_size, 2 * img_size, 3), dtype=np.float32)
        self.noise *= self.scene.noise_sigma
        skin = np.array(identity.skin)
        self.colours = {
            "skin": tuple(int(c) for c in skin),
            "shade": tuple(int(c) for c in skin * 0.82),
            "ear": tuple(int(c) for c in skin * 0.9),
            "line": tuple(int(c) for c in skin * 0.55),
            "lip": tuple(int(c) for c in np.clip(skin * (0.85, 0.55, 0.55) + (25, 0, 0), 0, 255)),
            "rosy": tuple(int(c) for c in np.clip(skin * (1.02, 0.78, 0.76), 0, 255)),
            "brow": tuple(int(c) for c in np.array(identity.hair) * 0.8),
            "beard": _mix(identity.skin, identity.hair, 0.35 + 0.6 * identity.beard),
        }

    def _background(self) -> np.ndarray:
        """Low-frequency two-colour texture with a few flat shapes, a margin larger than the
        canvas."""
        rng = np.random.default_rng(self.scene.texture_seed)
        side = self.canvas + 2 * self.margin
        coarse = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8))
        blend = coarse.resize((side, side), Image.BICUBIC)
        w = np.asarray(blend, dtype=np.float32)[..., None] / 255.0  # (H, W, 1)
        c0, c1 = (np.array(c, dtype=np.float32) for c in self.scene.background)
        tex = (1 - w) * c0 + w * c1
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, side, 2)
            x1, y1 = x0 + rng.integers(side // 8, side // 2, 2)
            tex[y0:y1, x0:x1] = tex[y0:y1, x0:x1] * 0.5 + rng.integers(0, 256, 3) * 0.5
        return np.clip(tex, 0, 255).astype(np.uint8)

    def _light(self) -> np.ndarray:
        """Directional shading times vignette times colour cast, (S, S, 3) float32."""
        g = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size - 0.5
        x, y = np.meshgrid(g, g)
        lx, ly = self.scene.light_dir
        shade = 1.0 + 2 * self.scene.light_strength * (lx * x + ly * y) - 0.35 * (x * x + y * y)
        return shade[..., None] * np.array(self.scene.colour_cast, dtype=np.float32)

    def _placement(self, f: FrameParams) -> tuple[float, np.ndarray, np.ndarray]:
        """Face units -> canvas pixels in one frame: the unit u, the centre (2,) and the scaled
        rotation (2, 2), so that pixel = p @ rot.T + centre."""
        W = self.canvas
        u = 0.3 * W * self.identity.scale
        centre = np.array([W * 0.5 + f.dx * u, W * 0.53 + f.dy * u])
        c, s = np.cos(f.roll), np.sin(f.roll)
        return u, centre, np.array([[c, -s], [s, c]]) * u

    def eye_centres(self, f: FrameParams) -> np.ndarray:
        """(2, 2) true centres (x, y) of the left and right eye in the output image, pixels (pixel
        centres at integers): where ``render`` draws them, so face alignment can be measured against
        them."""
        _, centre, rot = self._placement(f)
        eyes = np.array([[-0.36, -0.3], [0.36, -0.3]]) + np.array([0.12 * f.yaw, 0.08 * f.pitch])
        canvas = eyes @ rot.T + centre  # canvas pixels, supersampled
        return (canvas - (self.supersample - 1) / 2) / self.supersample

    def render(self, f: FrameParams, rng: np.random.Generator) -> np.ndarray:
        """Draw, reduce, blur, light and add noise.

        Args:
            f: the frame's state.
            rng: source of the sensor noise.
        Returns:
            (S, S, 3) uint8 image.
        """
        idt, col = self.identity, self.colours
        W, m = self.canvas, self.margin
        u, centre, rot = self._placement(f)

        def px(pts: np.ndarray, depth: float = 1.0) -> list[float]:
            """Face units (K, 2) -> flat pixel list; depth 1 = on the face plane, 0 = at the
            outline."""
            p = pts + depth * np.array([0.12 * f.yaw, 0.08 * f.pitch])
            return (p @ rot.T + centre).ravel().tolist()

        # The background moves against the head, as in a crop that follows the face.
        ox = int(np.clip(m + f.dx * u * 0.6, 0, 2 * m))
        oy = int(np.clip(m + f.dy * u * 0.6, 0, 2 * m))
        img = self.background.crop((ox, oy, ox + W, oy + W))
        d = ImageDraw.Draw(img)
        au1, au2, au4, au6, au7, au10, au12, au15, au23, au24, au25, au26 = f.au
        R = idt.face_ratio

        # Hair and neck behind the face.
        if idt.hair_style == 1:
            long_hair = np.array([[-1.12, -0.4 * R], [-1.25, 2.2 * R], [1.25, 2.2 * R],
                                  [1.12, -0.4 * R]])
            d.polygon(px(long_hair, 0), fill=idt.hair)
        neck = np.array([[-0.45, 0.5 * R], [-0.5, 2.5 * R], [0.5, 2.5 * R], [0.45, 0.5 * R]])
        d.polygon(px(neck, 0), fill=col["shade"])
        for side in (-1, 1):
            ear = _ellipse(side * (1.0 - 0.08 * side * f.yaw), -0.15, 0.13, 0.24)
            d.polygon(px(ear, 0), fill=col["ear"])
        hair_colour = idt.hair if idt.hair_style != 2 else col["shade"]
        d.polygon(px(_ellipse(0.0, -0.22 * R, 1.07, 0.86 * R), 0), fill=hair_colour)

        # Face outline: egg-shaped, the jaw drops with AU26 and speech.
        outline = _CIRCLE * (1.0 - 0.06 * abs(f.yaw), R)
        lower = outline[:, 1] > 0
        outline[lower, 1] *= 1.0 + 0.08 * au26 + 0.6 * f.talk
        outline[lower, 0] *= 1.0 - 0.16 * outline[lower, 1] / R
        d.polygon(px(outline, 0.2), fill=col["skin"])
        if idt.beard > 0:
            jaw = outline[outline[:, 1] > 0.3]
            d.polygon(px(jaw[np.argsort(-jaw[:, 0])], 0.2), fill=col["beard"])
        if idt.fringe > 0:
            # The hair cap's upper arc, closed by a fringe line across the forehead.
            arc = np.linspace(np.pi, 2 * np.pi, 13)
            cap = np.stack([1.07 * np.cos(arc), -0.22 * R + 0.86 * R * np.sin(arc)], 1)
            edge = -0.62 * R + idt.fringe
            fringe = np.array([[0.95, -0.5 * R], [0.4, edge], [-0.4, edge], [-0.95, -0.5 * R]])
            d.polygon(px(np.concatenate([cap, fringe]), 0.1), fill=idt.hair)

        # Cheeks: AU6 raises them and flushes the skin.
        for side in (-1, 1):
            d.polygon(px(_ellipse(side * 0.5, 0.08 - 0.07 * au6, 0.2, 0.13)),
                      fill=_mix(col["skin"], col["rosy"], idt.blush + 0.6 * au6))

        # Eyes: openness rises with arousal (and AU1+2), falls with AU7, AU6 and blinks.
        openness = idt.eye_open * (1.0 + 0.3 * f.arousal) * (1.0 + 0.15 * min(au1, au2))
        openness *= (1.0 - 0.5 * min(au7, 1.0)) * (1.0 - 0.25 * min(au6, 1.0)) * (1.0 - f.blink)
        ew, eh = 0.16 * idt.eye_size, max(0.09 * openness, 0.006)
        ri = 0.07 * idt.eye_size
        for side in (-1, 1):
            ex, ey = side * 0.36, -0.3
            d.polygon(px(_ellipse(ex, ey, ew, eh)), fill=SCLERA)
            gx, gy = ex + 0.05 * f.gaze[0], ey + 0.02 * f.gaze[1]
            d.polygon(px(_ellipse(gx, gy, ri, min(ri, 0.95 * eh))), fill=idt.iris)
            d.polygon(px(_ellipse(gx, gy, 0.032, min(0.032, 0.9 * eh))), fill=(15, 12, 12))
            lid = np.stack([ex + ew * _ARC, ey - eh * np.sqrt(1 - _ARC**2)], 1)
            d.polygon(px(_band(lid - (0, 0.025), 0.03)), fill=(35, 25, 25))
            low = np.stack([ex + ew * _ARC, ey + eh * np.sqrt(1 - _ARC**2)], 1)
            d.polygon(px(_band(low, 0.012 + 0.03 * au7)), fill=col["line"])
            if au6 > 0.25:  # crow's feet at the outer corner
                cx = ex + side * (ew + 0.03)
                for dy in (-0.04, 0.0, 0.04):
                    d.line(px(np.array([[cx, ey + dy * 0.5], [cx + side * 0.08, ey + dy * 1.6]])),
                           fill=_mix(col["skin"], col["line"], 0.7 * au6), width=max(1, W // 160))
            if idt.glasses:
                rim = _ellipse(ex, ey, ew + 0.08, 0.17)
                d.line(px(np.concatenate([rim, rim[:1]])), fill=(30, 30, 35), width=max(1, W // 90))

        # Brows: AU1 lifts the inner end, AU2 the outer end, AU4 pulls the inner end down and in;
        # arousal lifts both, negative valence knits the inner ends a little.
        knit = 0.04 * max(-f.valence, 0.0)
        for side in (-1, 1):
            by = -0.55 + idt.brow_offset - 0.03 * f.arousal
            brow = np.array([
                [side * (0.13 + 0.04 * au4), by + 0.02 - 0.13 * au1 + 0.09 * au4 + knit],
                [side * 0.33, by - 0.06 - 0.05 * au1 - 0.06 * au2 + 0.04 * au4],
                [side * 0.54, by - 0.01 - 0.13 * au2],
            ])
            d.polygon(px(_band(brow, idt.brow_thickness)), fill=col["brow"])
        if au4 > 0.25:  # glabella furrows
            for x in (-0.05, 0.05):
                d.line(px(np.array([[x, -0.5], [x * 0.6, -0.36]])),
                       fill=_mix(col["skin"], col["line"], 0.8 * au4), width=max(1, W // 140))

        # Nose; AU10 lifts the nostrils and deepens the nasolabial folds (AU12 deepens them too).
        d.line(px(np.array([[0.0, -0.2], [0.03, 0.08]])), fill=col["shade"], width=max(1, W // 70))
        d.polygon(px(_ellipse(0.0, 0.13 - 0.02 * au10, 0.13 + 0.03 * au10, 0.06)),
                  fill=col["shade"])
        for side in (-1, 1):
            nostril = _ellipse(side * 0.055, 0.16 - 0.03 * au10, 0.03 + 0.01 * au10, 0.018)
            d.polygon(px(nostril), fill=(40, 25, 22))
            fold = np.array([[side * 0.15, 0.12 - 0.03 * au10], [side * (0.3 + 0.05 * au12), 0.42]])
            depth = 0.15 + 0.6 * au10 + 0.3 * au12
            d.line(px(fold), fill=_mix(col["skin"], col["line"], depth), width=max(1, W // 120))
        if au10 > 0.3:  # nose wrinkles
            for y in (-0.12, -0.07):
                wrinkle = np.array([[-0.07, y], [0.07, y]])
                d.line(px(wrinkle), fill=_mix(col["skin"], col["line"], 0.6 * au10))

        self._mouth(d, px, f)

        if f.occluder is not None:
            cx, cy, rx, ry, colour = f.occluder
            d.polygon((_ellipse(cx, cy, rx, ry) * W).ravel().tolist(), fill=colour)

        if self.supersample > 1:
            img = img.reduce(self.supersample)
        if f.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(f.blur))
        arr = np.asarray(img, dtype=np.float32) * (self.light * f.gain)  # (S, S, C)
        S = self.size
        nx, ny = rng.integers(0, S, 2)
        arr += self.noise[ny:ny + S, nx:nx + S]
        return np.clip(arr, 0, 255, out=arr).astype(np.uint8)

    def _mouth(self, d: ImageDraw.ImageDraw, px, f: FrameParams) -> None:
        """Lips as two parabolic bands meeting at the corners; valence, AU12 and AU15 move the
        corners, AU25/AU26 and speech open the mouth, AU10 lifts the upper lip over the teeth,
        AU23/AU24 thin and narrow the lips."""
        idt, col = self.identity, self.colours
        au1, au2, au4, au6, au7, au10, au12, au15, au23, au24, au25, au26 = f.au
        my = 0.5 + 0.05 * au26
        w = 0.3 * idt.mouth_width * (1.0 + 0.2 * au12 - 0.18 * au23 - 0.06 * au24)
        corner = (my + idt.mouth_curve - 0.065 * f.valence * idt.valence_gain - 0.1 * au12
                  + 0.09 * au15)
        gap = 0.035 * au25 + 0.17 * au26 + f.talk
        lift = 0.035 * au10
        thin = max(1.0 - 0.55 * au24 - 0.3 * au23, 0.25)
        tu, tl = 0.05 * idt.lip_thickness * thin, 0.07 * idt.lip_thickness * thin
        x = w * _ARC
        q = np.abs(_ARC) ** 2.2  # 0 at the centre, 1 at the corners
        upper_in = my - 0.35 * gap - lift
        lower_in = my + 0.65 * gap

        def curve(mid: float) -> np.ndarray:
            return np.stack([x, mid * (1 - q) + corner * q], 1)  # (11, 2)

        lip_colour = _mix(col["lip"], (90, 30, 35), 0.3 * au23)
        lips = np.concatenate([curve(upper_in - tu), curve(lower_in + tl)[::-1]])
        d.polygon(px(lips), fill=lip_colour)
        if gap + lift > 0.012:
            d.polygon(px(np.concatenate([curve(upper_in), curve(lower_in)[::-1]])),
                      fill=MOUTH_INSIDE)
            teeth = min(0.05, 0.6 * (gap + lift))
            d.polygon(px(np.concatenate([curve(upper_in), curve(upper_in + teeth)[::-1]])),
                      fill=TEETH)
        else:
            d.line(px(curve(my)), fill=(60, 25, 25), width=max(1, self.canvas // 150))
        for side in (-1, 1):
            if au15 > 0.25:  # depressor lines below the corners
                d.line(px(np.array([[side * w, corner], [side * (w + 0.03), corner + 0.08]])),
                       fill=_mix(col["skin"], col["line"], 0.7 * au15),
                       width=max(1, self.canvas // 150))
        if au24 > 0.25:  # chin boss pushed up under pressed lips
            chin = _ellipse(0.0, lower_in + tl + 0.12, 0.16, 0.05)
            d.polygon(px(chin), fill=_mix(col["skin"], col["shade"], 0.8 * au24))


def encode_jpeg(img: np.ndarray, path, quality: int) -> None:
    """Write an (S, S, 3) uint8 image as a baseline JPEG (deterministic bytes for equal input)."""
    Image.fromarray(img).save(path, format="JPEG", quality=quality)
