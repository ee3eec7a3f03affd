"""Train a demo ControlNet (Canny edges of Fashion-MNIST) on top of a shipped demo denoiser, on CPU.

    python -m segquant.demo.train prepare --npz /tmp/fmnist_demo.npz        # once (segquant.demo.train)
    python -m segquant.demo.train_controlnet --npz /tmp/fmnist_demo.npz --model mmdit \\
        --out segquant/demo/weights --max-minutes 20

The denoiser is frozen; the ControlNet (:func:`segquant.demo.controlnet.build_controlnet`, initialised
from the denoiser) learns the same rectified-flow objective as the denoiser did (``x_t = (1 - σ) x0 + σ ε``,
target ``v = ε - x0``, logit-normal σ, 10% caption dropout), with the denoiser's prediction taking the
ControlNet residuals and the control = the Canny edge map (100 / 200) of ``x0``. AdamW, warm-up then
cosine decay over the time budget; no EMA (short runs). Writes ``OUT/<model>/controlnet/`` (fp16
``save_pretrained``), ``controlnet_train_config.json``, ``controlnet_train_log.csv``,
``controlnet_loss.png`` and ``controlnet_train_stdout.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from segquant.demo.controlnet import (
    CONTROLNET_FOLDER, build_controlnet, control_to_model, controlnet_residuals, fashion_controls)
from segquant.demo.models import count_params, denoiser_kwargs, output_to_image
from segquant.demo.train import _batch, _lr_factor, add_schedule_args, load_embeddings, plot_loss, write_log_csv

logger = logging.getLogger(__name__)


def _step(denoiser, controlnet, kind, data, emb, per_class, args, gen) -> torch.Tensor:
    """Loss of one batch (the ControlNet's parameters get the gradient)."""
    xt, sigma, target, states, pooled, idx = _batch(data, emb, per_class, args, gen, torch.device("cpu"))
    t = sigma * 1000
    cond = control_to_model(data["controls"][idx], kind)
    extra = controlnet_residuals(controlnet, kind, xt, t, states, pooled, cond)
    pred = output_to_image(kind, denoiser(**denoiser_kwargs(kind, xt, t, states, pooled), **extra))
    return torch.nn.functional.mse_loss(pred.float(), target)


def train_controlnet(args) -> dict:
    """Train the ControlNet of ``args.model``; returns the settings/results written as JSON."""
    from segquant.demo.data import load_npz_images
    from segquant.demo.pipeline import load_demo_pipeline

    torch.manual_seed(args.seed)
    data = load_npz_images(args.npz)
    data["controls"] = fashion_controls(np.load(args.npz)["train_images"])
    emb = load_embeddings(args.npz)
    per_class = torch.stack([torch.nonzero(emb["cap_labels"] == c).flatten() for c in range(10)])
    denoiser = load_demo_pipeline(args.model, args.weights_dir).denoiser.float().eval().requires_grad_(False)
    controlnet = build_controlnet(denoiser).float().train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    log, window, t0, step = [], [], time.time(), 0
    while step < args.steps and time.time() - t0 < 60 * args.max_minutes:
        for group in opt.param_groups:
            group["lr"] = args.lr * _lr_factor(step, time.time() - t0, args)
        loss = _step(denoiser, controlnet, args.model, data, emb, per_class, args, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        window.append(loss.detach())
        step += 1
        if step % args.log_every == 0:
            log.append((step, torch.stack(window).mean().item(), opt.param_groups[0]["lr"], time.time() - t0))
            window = []
            logger.info("%s controlnet step %d loss %.4f %.0fs", args.model, step, log[-1][1], log[-1][3])
    info = {"model": args.model, "class": type(controlnet).__name__, "parameters": count_params(controlnet),
            "steps_done": step, "train_seconds": round(time.time() - t0, 1),
            "final_loss": log[-1][1] if log else None, "args": vars(args), "torch": torch.__version__,
            "device": "cpu", "condition": "Canny(100, 200) of the 32x32 training image, white edges",
            "weights": "last step (no EMA), stored as fp16"}
    _save(controlnet, info, log, Path(args.out) / args.model)
    return info


def _save(controlnet, info: dict, log: list, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    controlnet.to(torch.float16).save_pretrained(folder / CONTROLNET_FOLDER)
    write_log_csv(log, folder / "controlnet_train_log.csv")
    (folder / "controlnet_train_config.json").write_text(json.dumps(info, indent=2, default=str))
    if log:
        plot_loss(log, folder / "controlnet_loss.png", f"{info['model']} {info['class']} "
                                                       f"({info['parameters'] / 1e6:.2f}M params)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_schedule_args(p, max_minutes=20.0, batch_size=32, lr=1e-3, warmup=20, log_every=10)
    p.add_argument("--out", required=True, help="weights folder (writes OUT/<model>/controlnet/)")
    p.add_argument("--weights-dir", default=None, help="demo denoiser weights (default: shipped)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    return p


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    info = train_controlnet(args)
    print(json.dumps({k: info[k] for k in ("model", "steps_done", "train_seconds", "final_loss")}))


if __name__ == "__main__":
    main()
