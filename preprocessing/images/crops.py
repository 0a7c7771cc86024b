"""Person crops: the square box around a person's 2D keypoints, cropping, label mapping, encoding.

Conventions (used by shards, readers and the 2D metrics alike):
- a crop box is (x0, y0, x1, y1) in full-image pixels, square (x1 - x0 == y1 - y0 = side);
- crop pixel coordinates: `crop = (full - (x0, y0)) * size / side`, and back
  `full = crop * side / size + (x0, y0)` (`to_crop`, `to_full`);
- a box may extend past the image border (a person near the edge): the outside is filled black.
  A box whose centre lies outside the image means the labels do not belong to this image, and is
  an error naming the file and frame.
"""
from __future__ import annotations

import io

import numpy as np

from preprocessing.errors import DataError


def keypoint_box(keypoints: np.ndarray, margin: float) -> np.ndarray:
    """Square box (x0, y0, x1, y1) around keypoints (J, 2): the tight box's longer side plus
    `margin` of it on each side, centred on the tight box. float64 (4,)."""
    lo, hi = keypoints.min(axis=0), keypoints.max(axis=0)
    centre = 0.5 * (lo + hi)
    side = max(float(np.max(hi - lo)) * (1.0 + 2.0 * margin), 1.0)
    return np.array([centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2])


def check_box(box: np.ndarray, width: int, height: int, where: str) -> None:
    """DataError if the box's centre is outside the image (see module doc) or it is not finite."""
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    if not np.isfinite(box).all() or not (0 <= cx < width and 0 <= cy < height):
        raise DataError(f"{where}: crop box ({box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f}) is outside "
                        f"the {width}x{height} image (its centre must lie inside; are the 2D keypoints "
                        f"for this video and camera?)")


def to_crop(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Full-image pixels (..., J, 2) -> crop pixels, `box` (..., 4)."""
    box = np.asarray(box, dtype=np.float64)
    side = (box[..., 2] - box[..., 0])[..., None, None]
    return (np.asarray(points, dtype=np.float64) - box[..., None, :2]) * (size / side)


def to_full(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels (..., J, 2) -> full-image pixels, `box` (..., 4): the inverse of `to_crop`."""
    box = np.asarray(box, dtype=np.float64)
    side = (box[..., 2] - box[..., 0])[..., None, None]
    return np.asarray(points, dtype=np.float64) * (side / size) + box[..., None, :2]


def crop_image(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut `box` out of an (H, W, 3) uint8 image and resize it to (size, size, 3) (bilinear);
    parts outside the image are black."""
    from PIL import Image

    pil = Image.fromarray(image)
    return np.asarray(pil.transform((size, size), Image.Transform.EXTENT, data=tuple(float(b) for b in box),
                                    resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)))


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 -> JPEG (4:2:0, no EXIF, no timestamps: deterministic) or PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=False)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"images.format must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes, size: int, where: str) -> np.ndarray:
    """Encoded bytes -> (size, size, 3) uint8; DataError naming `where` if they are not an image of
    that size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            array = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: corrupt image ({e})") from None
    if array.shape != (size, size, 3):
        raise DataError(f"{where}: image is {array.shape[1]}x{array.shape[0]}, expected {size}x{size}")
    return array


def flip_crops(images: np.ndarray, keypoints: np.ndarray, size: int, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror crops left-right: images (..., 3, H, W) flip along W; keypoints (..., J, 2) in crop
    pixels get x -> size - x and left/right joints swapped by `perm` (Skeleton.flip_permutation).
    A mirrored pixel edge at x maps to size - x, so a keypoint stays on the same image content."""
    flipped = images[..., ::-1]
    kp = keypoints[..., perm, :].copy()
    kp[..., 0] = size - kp[..., 0]
    return np.ascontiguousarray(flipped), kp
