"""Canny edge maps for ControlNet control images (OpenCV; extra ``segquant[control]``).

One image goes through three documented steps (:func:`make_triple`):

1. **Resize**: centre-crop to a square, then resize to ``resolution`` x ``resolution`` (``cv2.INTER_AREA``
   when shrinking, ``cv2.INTER_CUBIC`` when enlarging). ControlNet pipelines are run square here; the
   edges are computed *after* resizing so they stay one pixel wide at the generation resolution.
2. **Grey**: ``cv2.cvtColor(RGB2GRAY)``; optional Gaussian blur with an odd ``blur_kernel`` (0 = none).
3. **Canny**: ``cv2.Canny(grey, low, high)`` with hysteresis thresholds ``low`` = 100, ``high`` = 200
   by default (those of the SegQuant reference preprocessing and of the diffusers ControlNet Canny
   examples), in units of OpenCV's gradient magnitude: the L1 norm of the 3x3 Sobel responses, so a
   sharp step of ``d`` grey levels scores about ``4 d`` (a step of 50 grey levels starts an edge, 25
   extends one). Edges are white (255) on black (0), a single-channel uint8 map.

OpenCV is imported inside the functions, so ``segquant.data`` stays importable without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segquant.errors import ConfigError

DEFAULT_LOW, DEFAULT_HIGH = 100, 200


def require_cv2() -> Any:
    """Import OpenCV; a missing install raises ``ImportError`` naming the extra to install."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError("Canny control data needs OpenCV: pip install 'segquant[control]' "
                          "(opencv-python-headless)") from err
    return cv2


@dataclass(frozen=True)
class CannySettings:
    """How triples are made: square ``resolution`` (px), Canny ``low`` / ``high`` hysteresis thresholds
    (gradient-magnitude units, see the module docstring; ``0 <= low <= high``) and the Gaussian
    ``blur_kernel`` (odd, 0 = no blur)."""

    resolution: int = 512
    low: int = DEFAULT_LOW
    high: int = DEFAULT_HIGH
    blur_kernel: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ConfigError(f"resolution: {self.resolution!r} must be an integer >= 8")
        if not (0 <= self.low <= self.high):
            raise ConfigError(f"Canny thresholds: need 0 <= low <= high, got low={self.low}, high={self.high}")
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ConfigError(f"blur_kernel: {self.blur_kernel} must be 0 (no blur) or an odd size")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``(H, W, 3)``. Raises ``ValueError`` when it is missing,
    empty or cannot be decoded (the builder reports and skips such images)."""
    cv2 = require_cv2()
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"cannot read: {err.strerror or err}") from err
    if data.size == 0:
        raise ValueError("empty file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def square_resize(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop uint8 ``(H, W, C)`` to a square and resize it to ``(resolution, resolution, C)``."""
    cv2 = require_cv2()
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top: top + side, left: left + side]
    interp = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    return cv2.resize(crop, (resolution, resolution), interpolation=interp)


def canny_edges(rgb: np.ndarray, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH, blur_kernel: int = 0) -> np.ndarray:
    """Canny edges of uint8 RGB ``(H, W, 3)`` (or grey ``(H, W)``): uint8 ``(H, W)``, 255 on edges, 0 elsewhere."""
    cv2 = require_cv2()
    grey = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    if blur_kernel:
        grey = cv2.GaussianBlur(grey, (blur_kernel, blur_kernel), 0)
    return cv2.Canny(grey, low, high)


def make_triple(path: str | Path, settings: CannySettings) -> tuple[np.ndarray, np.ndarray]:
    """``(image, edges)``: the resized uint8 RGB image ``(R, R, 3)`` and its Canny map uint8 ``(R, R)``."""
    image = square_resize(read_rgb(path), settings.resolution)
    return image, canny_edges(image, settings.low, settings.high, settings.blur_kernel)


def write_image(path: str | Path, array: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write uint8 RGB ``(H, W, 3)`` or grey ``(H, W)`` to ``path`` (format from the suffix)."""
    cv2 = require_cv2()
    data = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if Path(path).suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(Path(path).suffix, data, params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    Path(path).write_bytes(buf.tobytes())
