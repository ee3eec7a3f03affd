"""A small Fashion-MNIST CNN: scores class accuracy of generated images and gives features for a
Fréchet distance in its own feature space.

Input: float ``(B, 1, 32, 32)`` in [-1, 1] (the demo models' image range). Training:
``python -m segquant.demo.classifier --data .devdata/fmnist_demo.npz --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

FEATURE_DIM = 256


class FashionClassifier(nn.Module):
    """Conv net: three conv stages (32, 64, 128 channels, each halving 32 -> 4), a 256-d feature layer
    and a 10-way linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(stage(1, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        self.feat = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * width * 16, FEATURE_DIM),
                                  nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 32, 32)`` in [-1, 1] -> float ``(B, 256)`` penultimate features."""
        return self.feat(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 32, 32)`` -> logits ``(B, 10)``."""
        return self.head(self.features(x))


def save_classifier(model: FashionClassifier, folder: str | Path, info: dict | None = None) -> None:
    """Write ``model.safetensors`` (fp16) and ``config.json`` (+ ``info``, e.g. test accuracy)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"num_classes": 10, "width": 32, **(info or {})}, indent=2))


def load_classifier(folder: str | Path, device="cpu") -> FashionClassifier:
    """Load a classifier saved by ``save_classifier`` (float32, eval mode)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors (classifier weights)")
    cfg = json.loads((folder / "config.json").read_text())
    model = FashionClassifier(cfg.get("num_classes", 10), cfg.get("width", 32))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / "model.safetensors")).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random shifts of up to 2 pixels (pad with background -1 and crop)."""
    b = x.shape[0]
    padded = nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,)).tolist()
    return padded[:, :, dy: dy + 32, dx: dx + 32].reshape(b, 1, 32, 32)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` ``(N, 1, 32, 32)`` classified as ``labels`` ``(N,)``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i: i + batch_size].to(device).float())
        correct += (logits.argmax(1).cpu() == labels[i: i + batch_size].cpu()).sum().item()
    return correct / max(1, len(images))


def train_classifier(train_x, train_y, test_x, test_y, epochs: int = 10, batch_size: int = 256,
                     lr: float = 2e-3, device="cpu", max_steps: int | None = None, seed: int = 0):
    """Train on ``train_x`` float ``(N, 1, 32, 32)`` in [-1, 1] and int64 labels; returns
    ``(model, test_accuracy)``. AdamW, one-cycle cosine schedule, random-shift augmentation."""
    torch.manual_seed(seed)
    model = FashionClassifier().to(device)
    train_x, train_y = train_x.to(device), train_y.to(device)
    steps_per_epoch = (len(train_x) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    step = 0
    while step < total:
        model.train()
        perm = torch.randperm(len(train_x), device=device)
        for i in range(0, len(train_x), batch_size):
            idx = perm[i: i + batch_size]
            loss = nn.functional.cross_entropy(model(_augment(train_x[idx])), train_y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
        logger.info("classifier step %d/%d loss %.4f", step, total, loss.item())
    return model.eval(), accuracy(model, test_x, test_y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the Fashion-MNIST classifier used by the demo metrics.")
    parser.add_argument("--data", required=True, help="npz written by `python -m segquant.demo.train prepare`")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from segquant.demo.data import load_npz_images

    d = load_npz_images(args.data)
    t0 = time.time()
    model, acc = train_classifier(d["train_x"], d["train_y"], d["test_x"], d["test_y"], epochs=args.epochs,
                                  device=args.device, max_steps=args.max_steps)
    info = {"test_accuracy": acc, "epochs": args.epochs, "train_seconds": round(time.time() - t0, 1),
            "device": str(args.device), "torch": torch.__version__}
    save_classifier(model, args.out, info)
    print(f"classifier test accuracy {acc:.4f} ({info['train_seconds']} s) -> {args.out}")


if __name__ == "__main__":
    main()
