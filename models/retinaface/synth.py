"""Synthetic training images: grayscale face crops composited onto face-free photos.

Data path (training only): face crops + backgrounds -> :class:`SyntheticFaces` -> one
``Sample`` (image, boxes, landmarks) per index -> the same tensor conversion as real data
(``data.to_training_batch``).

Sources: 36x36 grayscale frontal crops (Caltech 10,000 WebFaces) and colour photos without
faces. Every index gives the same image for the same seed (the RNG is seeded with
``(seed, index)``), so a resumed run sees exactly the images it would have seen.

Landmarks: the crops are aligned (eyes on one row, same inter-ocular distance), so their five
landmarks are **derived from the crop alignment**: :data:`CROP_LANDMARKS`, read off the mean of
all 6,713 crops (dark eye, nostril and mouth-corner minima) and checked by drawing them on
crops. They follow the crop through flips, rotation and scaling. Individual crops deviate by
a pixel or two from the template; the landmark loss sees that as label noise.

Boxes: :func:`box_from_landmarks`, the evaluation set's convention (CMU+MIT labels are "tight"
eye-to-mouth boxes drawn from the landmarks): width = 3.03 x inter-ocular distance, height =
3.25 x eye-to-mouth distance, centred on the eyes horizontally, eyes at 37% of the height.
These ratios are the medians measured on the labelled boxes (ratios only, no images).

Against shortcuts: crop edges are blended with a random soft mask (ellipse or rounded box,
random feather), and "distractor" patches cut from other backgrounds go through the same
scaling, masking and blending, so a blended patch is not by itself a face. Optionally
(``partial_face_prob``) some distractors are parts of face crops (a corner or half window,
enlarged), so that an eye- or mouth-like blob alone is not a face either.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.retinaface.data import Sample

CROP_SIZE = 36
# left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y) in crop pixels
# (continuous coordinates: pixel i covers [i, i + 1)); "left" = smaller x in the image.
CROP_LANDMARKS = np.array(
    [[12.5, 12.5], [23.5, 12.5], [18.0, 19.5], [14.0, 24.0], [22.5, 24.0]], dtype=np.float32
)
# The evaluation labels' box convention, as ratios to the landmark geometry.
BOX_WIDTH_PER_EYE_DISTANCE = 3.03
BOX_HEIGHT_PER_EYE_MOUTH = 3.25
EYES_FROM_TOP = 0.372
# Horizontal mirror: left eye <-> right eye, nose stays, left mouth <-> right mouth.
FLIP_ORDER = (1, 0, 2, 4, 3)


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(N, 5, 2) landmarks -> (N, 4) x1y1x2y2 boxes in the CMU+MIT label convention."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    eyes = (landmarks[:, 0] + landmarks[:, 1]) / 2
    mouth = (landmarks[:, 3] + landmarks[:, 4]) / 2
    eye_distance = np.linalg.norm(landmarks[:, 1] - landmarks[:, 0], axis=1)
    eye_mouth = np.linalg.norm(mouth - eyes, axis=1)
    width = BOX_WIDTH_PER_EYE_DISTANCE * eye_distance
    height = BOX_HEIGHT_PER_EYE_MOUTH * eye_mouth
    top = eyes[:, 1] - EYES_FROM_TOP * height
    x1 = eyes[:, 0] - width / 2
    return np.stack([x1, top, x1 + width, top + height], axis=1).astype(np.float32)


# Pyramid levels a detector trained on these composites is served with (config.json's
# preprocess.pyramid): its faces are at most ~0.85 x the training size, so larger faces are
# looked for on 1/2 and 1/4 copies (polynl_core/pyramid.py).
SYNTH_PYRAMID = (0.5, 0.25)


@dataclass
class SynthConfig:
    image_size: int = 320
    min_face: float = 12.0  # box width in output pixels
    max_face: float = 300.0  # capped at 0.85 x image_size
    max_faces: int = 10
    empty_prob: float = 0.08  # images with no face at all (hard negatives)
    max_distractors: int = 3
    partial_face_prob: float = 0.0  # share of distractors cut from a face crop (part of a face)
    grayscale_prob: float = 0.5
    blur_prob: float = 0.3
    noise_prob: float = 0.4
    jpeg_prob: float = 0.6
    max_rotation: float = 12.0  # degrees


def _load_images(folder: Path, mode: str) -> list[Image.Image]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(image.convert(mode))
    return images


class SyntheticFaces:
    """Map-style dataset of composites: ``dataset[i] -> Sample``; ``len`` is nominal."""

    def __init__(
        self,
        face_dir: str | Path,
        background_dir: str | Path,
        config: SynthConfig | None = None,
        seed: int = 0,
        length: int = 1_000_000,
    ) -> None:
        self.config = config or SynthConfig()
        self.seed = seed
        self.length = length
        self.faces = [np.asarray(im, dtype=np.uint8) for im in _load_images(Path(face_dir), "L")]
        self.backgrounds = _load_images(Path(background_dir), "RGB")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        return compose(rng, self.faces, self.backgrounds, self.config)


def _background(rng: np.random.Generator, backgrounds: Sequence[Image.Image], size: int) -> Image.Image:
    image = backgrounds[int(rng.integers(len(backgrounds)))]
    w, h = image.size
    area = w * h * rng.uniform(0.08, 1.0)
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    cw = int(min(w, max(8, round(math.sqrt(area * aspect)))))
    ch = int(min(h, max(8, round(math.sqrt(area / aspect)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _soft_mask(rng: np.random.Generator, size: int) -> Image.Image:
    """A random soft-edged mask for a ``size`` x ``size`` patch (ellipse or rounded box)."""
    scale = 4  # draw larger, then downsample: anti-aliased edges
    big = size * scale
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    inset_x = rng.uniform(0.0, 0.12) * big
    inset_y = rng.uniform(0.0, 0.12) * big
    shape = (inset_x, inset_y, big - inset_x, big - inset_y)
    if rng.random() < 0.5:
        draw.ellipse(shape, fill=255)
    else:
        draw.rounded_rectangle(shape, radius=rng.uniform(0.05, 0.4) * big, fill=255)
    mask = mask.resize((size, size), Image.Resampling.BILINEAR)
    feather = rng.uniform(0.03, 0.15) * size
    if feather >= 0.5:
        mask = mask.filter(ImageFilter.GaussianBlur(feather))
    return mask


def _face_patch(rng: np.random.Generator, crop: np.ndarray, colour: bool) -> tuple[Image.Image, np.ndarray]:
    """Photometric changes and optional skin tint of one 36x36 crop, plus its landmarks."""
    face = crop.astype(np.float32)
    landmarks = CROP_LANDMARKS.copy()
    if rng.random() < 0.5:
        face = face[:, ::-1]
        landmarks = landmarks[list(FLIP_ORDER)]
        landmarks[:, 0] = CROP_SIZE - landmarks[:, 0]
    gamma = math.exp(rng.uniform(-0.4, 0.4))
    face = 255.0 * (face / 255.0) ** gamma
    face = (face - face.mean()) * rng.uniform(0.6, 1.4) + face.mean() + rng.uniform(-30, 30)
    if colour and rng.random() < 0.85:
        tint = np.array([1.0, rng.uniform(0.72, 0.92), rng.uniform(0.55, 0.85)], dtype=np.float32)
        tint *= rng.uniform(0.8, 1.15)
        rgb = face[:, :, None] * tint[None, None, :]
    else:
        rgb = np.repeat(face[:, :, None], 3, axis=2)
    patch = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return patch, landmarks


def _transform_patch(
    rng: np.random.Generator,
    patch: Image.Image,
    landmarks: np.ndarray | None,
    out_size: int,
    max_rotation: float,
) -> tuple[Image.Image, Image.Image, np.ndarray | None]:
    """Scale a 36x36 patch to ``out_size`` and rotate it; returns patch, mask, landmarks."""
    scale = out_size / CROP_SIZE
    patch = patch.resize((out_size, out_size), Image.Resampling.BILINEAR)
    mask = _soft_mask(rng, out_size)
    angle = rng.uniform(-max_rotation, max_rotation)
    if abs(angle) > 0.5:
        patch = patch.rotate(angle, resample=Image.Resampling.BILINEAR)
        mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR)
    if landmarks is not None:
        points = landmarks * scale - out_size / 2
        theta = math.radians(angle)  # PIL rotates counter-clockwise in image coordinates
        cos, sin = math.cos(theta), math.sin(theta)
        x = points[:, 0] * cos + points[:, 1] * sin
        y = -points[:, 0] * sin + points[:, 1] * cos
        landmarks = np.stack([x, y], axis=1) + out_size / 2
    return patch, mask, landmarks


def _place(
    rng: np.random.Generator, size: int, image_size: int, taken: list[tuple[int, int, int]]
) -> tuple[int, int] | None:
    """Top-left corner for a patch that overlaps earlier patches by at most a little."""
    limit = image_size - size
    if limit < 0:
        return None
    for _ in range(25):
        x, y = int(rng.integers(0, limit + 1)), int(rng.integers(0, limit + 1))
        if all(
            max(0, min(x + size, tx + ts) - max(x, tx)) * max(0, min(y + size, ty + ts) - max(y, ty))
            < 0.1 * min(size, ts) ** 2
            for tx, ty, ts in taken
        ):
            return x, y
    return None


def _finish(rng: np.random.Generator, image: Image.Image, config: SynthConfig) -> Image.Image:
    """Whole-image degradations: grey, blur, resampling, noise, contrast, JPEG."""
    if rng.random() < config.grayscale_prob:
        image = image.convert("L").convert("RGB")
    if rng.random() < config.blur_prob:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6)))
    if rng.random() < 0.15:
        side = image.size[0]
        small = max(16, int(side * rng.uniform(0.4, 0.8)))
        image = image.resize((small, small), Image.Resampling.BILINEAR).resize(
            (side, side), Image.Resampling.BILINEAR
        )
    array = image.convert("RGB")
    pixels = np.asarray(array, dtype=np.float32)
    pixels = (pixels - 128.0) * rng.uniform(0.7, 1.3) + 128.0 + rng.uniform(-25, 25)
    if rng.random() < config.noise_prob:
        pixels += rng.normal(0.0, rng.uniform(2.0, 10.0), size=pixels.shape[:2])[:, :, None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < config.jpeg_prob:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(25, 96)))
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image


def compose(
    rng: np.random.Generator,
    faces: Sequence[np.ndarray],
    backgrounds: Sequence[Image.Image],
    config: SynthConfig,
) -> Sample:
    """One composite image with its face boxes and landmarks."""
    size = config.image_size
    canvas = _background(rng, backgrounds, size)
    colour = rng.random() >= config.grayscale_prob
    count = 0 if rng.random() < config.empty_prob else int(rng.integers(1, config.max_faces + 1))
    max_face = min(config.max_face, 0.85 * size)
    # Half of the images keep faces of similar size (group photos), half mix sizes.
    shared = math.exp(rng.uniform(math.log(config.min_face), math.log(max_face)))
    same_size = rng.random() < 0.5
    taken: list[tuple[int, int, int]] = []
    all_landmarks: list[np.ndarray] = []
    patches: list[tuple[Image.Image, np.ndarray | None]] = []
    for _ in range(count):
        patches.append(_face_patch(rng, faces[int(rng.integers(len(faces)))], colour))
    for _ in range(int(rng.integers(0, config.max_distractors + 1))):
        if rng.random() < config.partial_face_prob:
            crop = faces[int(rng.integers(len(faces)))]
            patches.append((_face_part(rng, _face_patch(rng, crop, colour)[0]), None))
        else:
            patches.append((_distractor(rng, backgrounds), None))
    for patch, landmarks in patches:
        if same_size and landmarks is not None:
            width = shared * math.exp(rng.uniform(-0.2, 0.2))
        else:
            width = math.exp(rng.uniform(math.log(config.min_face), math.log(max_face)))
        # The template box is ~33 of the 36 crop pixels wide: size the patch from the box.
        out_size = max(4, round(width * CROP_SIZE / 33.3))
        spot = _place(rng, out_size, size, taken)
        if spot is None:
            continue
        patch, mask, moved = _transform_patch(rng, patch, landmarks, out_size, config.max_rotation)
        canvas.paste(patch, spot, mask)
        taken.append((spot[0], spot[1], out_size))
        if moved is not None:
            all_landmarks.append(moved + np.asarray(spot, dtype=np.float32))
    image = _finish(rng, canvas, config)
    landmarks = np.asarray(all_landmarks, dtype=np.float32).reshape(-1, 5, 2)
    return Sample(
        image=np.asarray(image, dtype=np.uint8),
        boxes=box_from_landmarks(landmarks),
        landmarks=landmarks.reshape(-1, 10),
    )


def _face_part(rng: np.random.Generator, patch: Image.Image) -> Image.Image:
    """A window of a face crop that misses much of the face (one half, or an off-centre cut),
    enlarged to a full patch: teaches that eye- or mouth-like blobs alone are not a face."""
    side = int(rng.integers(14, 23))
    half = CROP_SIZE - side
    corners = [(0, 0), (half, 0), (0, half), (half, half), (half // 2, 0), (half // 2, half)]
    x0, y0 = corners[int(rng.integers(len(corners)))]
    window = patch.crop((x0, y0, x0 + side, y0 + side))
    return window.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR)


def _distractor(rng: np.random.Generator, backgrounds: Sequence[Image.Image]) -> Image.Image:
    """A non-face patch processed like a face crop (36x36 grey or colour) to blend in."""
    image = backgrounds[int(rng.integers(len(backgrounds)))]
    w, h = image.size
    side = int(rng.integers(min(24, w, h), min(w, h) + 1))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    patch = image.crop((x0, y0, x0 + side, y0 + side)).resize((CROP_SIZE, CROP_SIZE))
    if rng.random() < 0.6:
        patch = patch.convert("L").convert("RGB")
    return patch
