"""Train a demo denoiser with rectified flow on Fashion-MNIST (pixel space, 1×32×32).

Two steps:

1. ``python -m segquant.demo.train prepare --npz .devdata/fmnist_demo.npz`` (CPU, needs the text
   encoder): images, labels and the embeddings of the 400 unique captions (index = caption id).
2. ``python -m segquant.demo.train train --npz ... --model mmdit --out DIR`` (GPU or CPU, no text
   encoder needed): rectified flow ``x_t = (1 - σ) x0 + σ ε``, target ``v = ε - x0``, σ logit-normal,
   caption dropout (null caption = the empty prompt) for classifier-free guidance, AdamW with warm-up and a
   cosine decay over the step or time budget, EMA weights. Writes ``DIR/<model>/`` in diffusers
   ``save_pretrained`` layout (fp16 EMA weights + scheduler), ``train_config.json`` (all settings and
   results), ``train_log.csv``, ``loss.png`` and ``samples.png``; with ``--classifier`` it also scores
   the class accuracy of generated samples.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from segquant.demo.models import CONFIGS, MODEL_NAMES, build_denoiser, count_params, predict

logger = logging.getLogger(__name__)


def prepare(npz_path: str, data_dir=None, text_encoder_path=None) -> None:
    """Write the training npz: uint8 images ``(N, 28, 28)``, labels, caption embeddings (fp16
    ``(400, 24, 384)`` states and ``(400, 384)`` pooled), caption labels and the null (empty-prompt) embedding."""
    from segquant.demo.data import all_captions, load_fashion_mnist
    from segquant.demo.text_encoder import encode_prompts, load_text_encoder

    tr_x, tr_y = load_fashion_mnist("train", data_dir)
    te_x, te_y = load_fashion_mnist("test", data_dir)
    captions, cap_labels = all_captions()
    tokenizer, encoder = load_text_encoder(text_encoder_path)
    states, pooled = encode_prompts(tokenizer, encoder, captions)
    null_states, null_pooled = encode_prompts(tokenizer, encoder, [""])
    Path(npz_path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        npz_path, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y,
        cap_states=states.half().numpy(), cap_pooled=pooled.half().numpy(), cap_labels=cap_labels,
        null_states=null_states.half().numpy(), null_pooled=null_pooled.half().numpy(),
        captions=np.asarray(captions))
    logger.info("wrote %s (%d train, %d test, %d captions)", npz_path, len(tr_x), len(te_x), len(captions))


def load_embeddings(npz_path: str, device="cpu") -> dict:
    """Caption embeddings of the npz as float32 tensors on ``device``."""
    d = np.load(npz_path)
    keys = ("cap_states", "cap_pooled", "null_states", "null_pooled")
    out = {k: torch.from_numpy(d[k]).float().to(device) for k in keys}
    out["cap_labels"] = torch.from_numpy(d["cap_labels"]).long().to(device)
    out["captions"] = [str(c) for c in d["captions"]]
    return out


def _lr_factor(step: int, elapsed: float, args) -> float:
    """Linear warm-up, then cosine decay to 10% over the step or time budget (whichever is closer)."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    progress = step / args.steps
    if args.max_minutes:
        progress = max(progress, elapsed / (60 * args.max_minutes))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(data, emb, per_class, args, gen, device):
    """One training batch: noisy images, sigmas, targets, (dropped-out) embeddings and the image indices."""
    idx = torch.randint(0, data["train_x"].shape[0], (args.batch_size,), device=device, generator=gen)
    x0, y = data["train_x"][idx].float(), data["train_y"][idx]
    pick = torch.randint(0, per_class.shape[1], (args.batch_size,), device=device, generator=gen)
    cap = per_class[y, pick]
    states, pooled = emb["cap_states"][cap], emb["cap_pooled"][cap]
    drop = torch.rand(args.batch_size, device=device, generator=gen) < args.caption_dropout
    states = torch.where(drop[:, None, None], emb["null_states"].expand_as(states), states)
    pooled = torch.where(drop[:, None], emb["null_pooled"].expand_as(pooled), pooled)
    sigma = torch.sigmoid(torch.randn(args.batch_size, device=device, generator=gen) * args.logit_std)
    noise = torch.randn(x0.shape, device=device, generator=gen)
    s = sigma[:, None, None, None]
    return (1 - s) * x0 + s * noise, sigma, noise - x0, states, pooled, idx


def train(args) -> dict:
    """Train one denoiser; returns the settings/results dict that is written as ``train_config.json``."""
    from segquant.demo.data import load_npz_images

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    data = {k: v.to(device) for k, v in load_npz_images(args.npz).items()}
    data["train_x"] = data["train_x"].half()
    emb = load_embeddings(args.npz, device)
    per_class = torch.stack([torch.nonzero(emb["cap_labels"] == c).flatten() for c in range(10)])
    model = build_denoiser(args.model).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    gen = torch.Generator(device).manual_seed(args.seed)
    use_amp = device.type == "cuda" and args.bf16
    log, window, t0, step = [], [], time.time(), 0
    while step < args.steps and (not args.max_minutes or time.time() - t0 < 60 * args.max_minutes):
        for group in opt.param_groups:
            group["lr"] = args.lr * _lr_factor(step, time.time() - t0, args)
        xt, sigma, target, states, pooled, _ = _batch(data, emb, per_class, args, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = predict(model, xt, sigma * 1000, states, pooled, kind=args.model)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        window.append(loss.detach())
        step += 1
        if step % args.log_every == 0:
            log.append((step, torch.stack(window).mean().item(), opt.param_groups[0]["lr"], time.time() - t0))
            window = []
            if step % (args.log_every * 20) == 0:
                logger.info("%s step %d loss %.4f %.0fs", args.model, *log[-1][:2], log[-1][3])
    info = _settings(args, model, step, time.time() - t0, log)
    _save(ema, info, log, Path(args.out) / args.model)
    return info


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e, m, 1.0 - decay)


def _settings(args, model, steps, seconds, log) -> dict:
    return {"model": args.model, "class": type(model).__name__, "config": CONFIGS[args.model],
            "parameters": count_params(model), "steps_done": steps, "train_seconds": round(seconds, 1),
            "final_loss": log[-1][1] if log else None, "args": vars(args), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "objective": "rectified flow, v = noise - x0, sigma ~ sigmoid(N(0, logit_std))",
            "weights": "EMA, stored as fp16"}


def _save(ema, info, log, folder: Path) -> None:
    """Write the EMA weights (fp16) in save_pretrained layout, the scheduler, settings, log and curve."""
    from segquant.demo.pipeline import make_scheduler

    folder.mkdir(parents=True, exist_ok=True)
    sub = "unet" if info["model"] == "unet" else "transformer"
    copy.deepcopy(ema).to("cpu", torch.float16).save_pretrained(folder / sub)
    make_scheduler().save_pretrained(folder / "scheduler")
    write_log_csv(log, folder / "train_log.csv")
    (folder / "train_config.json").write_text(json.dumps(info, indent=2, default=str))
    plot_loss(log, folder / "loss.png", f"{info['model']} ({info['class']}, {info['parameters'] / 1e6:.2f}M params)")


def write_log_csv(log, path: Path) -> None:
    """The training log ``[(step, loss, lr, seconds)]`` as CSV."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "lr", "seconds"])
        w.writerows([(s, f"{l:.5f}", f"{lr:.3e}", f"{t:.1f}") for s, l, lr, t in log])


def add_schedule_args(p: argparse.ArgumentParser, *, max_minutes, batch_size: int, lr: float, warmup: int,
                      log_every: int) -> None:
    """The options a training run shares with the ControlNet's (data, model, output, schedule, seed)."""
    p.add_argument("--npz", required=True, help="the npz of `python -m segquant.demo.train prepare`")
    p.add_argument("--model", choices=MODEL_NAMES, required=True)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--max-minutes", type=float, default=max_minutes,
                   help="time budget (stops and decays LR by time)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--seed", type=int, default=0)


def plot_loss(log, path, title: str) -> None:
    """Loss curve PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if log:
        ax.plot([r[0] for r in log], [r[1] for r in log], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow MSE")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# (steps, guidance) settings scored after training; the first one also draws samples.png
EVAL_SETTINGS = ((20, 4.0), (10, 4.0), (20, 2.0), (20, 6.0), (10, 6.0))


@torch.no_grad()
def generate_for_labels(pipe, emb, labels, steps, guidance, seed=0, batch_size=500):
    """Images float ``(N, 1, 32, 32)`` in [0, 1] for class ``labels`` (random captions of each class)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    caps = [torch.nonzero(emb["cap_labels"] == c).flatten().cpu() for c in range(10)]
    ids = torch.stack([caps[int(y)][torch.randint(len(caps[int(y)]), (1,), generator=gen)] for y in labels]).flatten()
    ids[: 10] = torch.tensor([caps[int(y)][0] for y in labels[:10]])  # canonical caption once per class
    out = []
    for i in range(0, len(labels), batch_size):
        sel = ids[i: i + batch_size].to(emb["cap_states"].device)
        n = len(sel)
        out.append(pipe(prompt_embeds=emb["cap_states"][sel], pooled_prompt_embeds=emb["cap_pooled"][sel],
                        negative_prompt_embeds=emb["null_states"].expand(n, -1, -1),
                        negative_pooled_prompt_embeds=emb["null_pooled"].expand(n, -1),
                        num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt").images)
    return torch.cat(out)


def evaluate_trained(args, info: dict) -> dict:
    """Class accuracy of generated images (by the classifier in ``args.classifier``) for each of
    ``EVAL_SETTINGS``; writes ``samples.png`` and adds ``class_accuracy`` to ``train_config.json``."""
    from segquant.demo.classifier import accuracy, load_classifier
    from segquant.demo.pipeline import SegQuantDemoPipeline, load_denoiser, make_scheduler
    from segquant.eval.report import save_grid

    folder = Path(args.out) / args.model
    device = torch.device(args.device)
    model = load_denoiser(folder).to(device)
    key = "unet" if args.model == "unet" else "transformer"
    pipe = SegQuantDemoPipeline(scheduler=make_scheduler(), **{key: model})
    pipe.set_progress_bar_config(disable=True)
    clf = load_classifier(args.classifier, device)
    emb = load_embeddings(args.npz, device)
    labels = torch.arange(10).repeat(args.eval_per_class)
    results = {}
    for steps, guidance in EVAL_SETTINGS:
        images = generate_for_labels(pipe, emb, labels, steps, guidance, seed=args.seed)
        acc = accuracy(clf, images * 2 - 1, labels)
        results[f"steps={steps},cfg={guidance}"] = round(acc, 4)
        logger.info("%s: class accuracy %.3f (steps=%d, cfg=%s, n=%d)", args.model, acc, steps, guidance, len(labels))
        if (steps, guidance) == EVAL_SETTINGS[0]:
            save_grid(images[:80].cpu(), nrow=10, path=folder / "samples.png", scale=3)
    info["class_accuracy"] = results
    info["class_accuracy_note"] = (f"{args.eval_per_class} images per class, random captions, "
                                   "classifier in " + str(args.classifier))
    (folder / "train_config.json").write_text(json.dumps(info, indent=2, default=str))
    return results


def sample_sheet(path: str, weights_dir=None, rows: int = 2, steps: int = 20, guidance: float = 4.0) -> None:
    """PNG with ``rows`` samples per class (columns) for each demo model, from the shipped weights on CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segquant.demo.data import CLASS_NAMES, eval_prompts
    from segquant.demo.pipeline import load_demo_pipeline
    from segquant.eval.report import to_uint8_grid

    prompts, _ = eval_prompts(rows)
    fig, axes = plt.subplots(len(MODEL_NAMES), 1, figsize=(8, 1.9 * rows * len(MODEL_NAMES) / 2 + 0.6))
    for ax, name in zip(axes, MODEL_NAMES):
        pipe = load_demo_pipeline(name, weights_dir)
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
        ax.imshow(to_uint8_grid(images, nrow=10)[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_yticks([])
        ax.set_xticks([1 + 33 * i + 16 for i in range(10)])
        ax.set_xticklabels(CLASS_NAMES, fontsize=6)
        ax.set_title(f"{name} ({type(pipe.denoiser).__name__})", fontsize=8)
    fig.suptitle(f"shipped demo models, {steps} Euler steps, CFG {guidance}, seeds 0..{len(prompts) - 1}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="write the npz with images and caption embeddings (CPU)")
    pr.add_argument("--npz", required=True)
    pr.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    sh = sub.add_parser("sheet", help="sample sheet PNG of the shipped models (CPU)")
    sh.add_argument("--out", required=True)
    sh.add_argument("--weights-dir", default=None)
    tr = sub.add_parser("train", help="train one denoiser")
    add_schedule_args(tr, max_minutes=None, batch_size=256, lr=4e-4, warmup=300, log_every=25)
    tr.add_argument("--out", required=True)
    tr.add_argument("--weight-decay", type=float, default=0.0)
    tr.add_argument("--ema", type=float, default=0.999)
    tr.add_argument("--no-bf16", dest="bf16", action="store_false")
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tr.add_argument("--classifier", default=None, help="classifier folder: score class accuracy after training")
    tr.add_argument("--eval-per-class", type=int, default=50)
    return p


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "prepare":
        prepare(args.npz, args.data_dir)
        return
    if args.cmd == "sheet":
        sample_sheet(args.out, args.weights_dir)
        return
    info = train(args)
    print(f"{args.model}: {info['steps_done']} steps in {info['train_seconds']} s, final loss {info['final_loss']:.4f}")
    if args.classifier:
        evaluate_trained(args, info)


if __name__ == "__main__":
    main()
