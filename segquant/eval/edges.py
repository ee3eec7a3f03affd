"""Edge agreement of generated images with their Canny control images (ControlNet evaluation).

``edge_f1(images, controls)``: the Canny edges of each generated image (same detector and thresholds
as the control data, :mod:`segquant.data.canny`) against the control's edges, matched with a
tolerance of ``tolerance`` pixels (an edge pixel counts as matched when the other map has an edge
within the ``(2t+1) x (2t+1)`` square around it):

- precision = matched output edge pixels / output edge pixels,
- recall = matched control edge pixels / control edge pixels,
- F1 = 2 P R / (P + R); 1 when neither map has an edge, 0 when only one has.

A quantized pipeline that follows its control as well as full precision scores the FP image's F1.
Needs OpenCV (extra ``segquant[control]``).
"""

from __future__ import annotations

import numpy as np
import torch

from segquant.data.canny import DEFAULT_HIGH, DEFAULT_LOW, canny_edges, require_cv2


def _grey_uint8(image: torch.Tensor) -> np.ndarray:
    """float ``(C, H, W)`` in [0, 1] (C = 1 or 3) -> uint8 ``(H, W, 3)`` RGB or ``(H, W)`` grey."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))


def control_edges(control: torch.Tensor) -> np.ndarray:
    """Edge map of a control image float ``(C, H, W)`` in [0, 1]: bool ``(H, W)``, True where > 0.5."""
    return (control.detach().float().mean(0) > 0.5).cpu().numpy()


def _f1(pred: np.ndarray, target: np.ndarray, tolerance: int) -> float:
    cv2 = require_cv2()
    if not pred.any() and not target.any():
        return 1.0
    if not pred.any() or not target.any():
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_target = cv2.dilate(target.astype(np.uint8), kernel) > 0
    near_pred = cv2.dilate(pred.astype(np.uint8), kernel) > 0
    precision = float((pred & near_target).sum() / pred.sum())
    recall = float((target & near_pred).sum() / target.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def edge_f1(images: torch.Tensor, controls: torch.Tensor, tolerance: int = 1,
            low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH) -> torch.Tensor:
    """Per-image edge F1 (float64 ``(N,)``) of ``images`` float ``(N, C, H, W)`` in [0, 1] against the
    control images ``controls`` float ``(N, C', H, W)`` in [0, 1] (white edges on black)."""
    if images.shape[0] != controls.shape[0] or images.shape[-2:] != controls.shape[-2:]:
        raise ValueError(f"edge_f1: images {tuple(images.shape)} and controls {tuple(controls.shape)} must have "
                         "the same count and height x width (load the controls at the generation size)")
    scores = [_f1(canny_edges(_grey_uint8(img), low, high) > 0, control_edges(ctrl), tolerance)
              for img, ctrl in zip(images, controls)]
    return torch.tensor(scores, dtype=torch.float64)


def control_scores(images: torch.Tensor, cfg) -> dict[str, float]:
    """``{"edge_f1": mean F1}`` of ``images`` against ``cfg.controls`` (an ``EvalConfig``), or ``{}``
    when the run has no control images."""
    controls = getattr(cfg, "controls", None)
    if controls is None:
        return {}
    return {"edge_f1": float(edge_f1(images, controls.to(images.device)).mean())}
