"""Tables of the channel-corrector runs: PSNR per model / preset / seed and the mean gain over seeds.

    python benchmarks/results/affiner_sweep/channel/summarise.py \
        benchmarks/results/affiner_sweep/channel/paraphrased{,_seed1,_seed2}/results.json
"""

import json
import statistics
import sys

MODELS, PRESETS = ("mmdit", "flux", "unet"), ("w4a8", "w4a4")
METHODS = ("affiner", "channel", "channel:use_input=false")


def rows_of(run: dict, model: str) -> dict:
    return {r["config"]: r for r in run["models"][model]["rows"]}


def per_seed(runs: list[dict]) -> None:
    print("| model | preset | seed | none | + affiner | + channel | + channel (no x_t) "
          "| ε rel.err none / affiner / channel / no x_t | fit s affiner / channel / no x_t |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        for preset in PRESETS:
            for run in runs:
                rows = rows_of(run, model)
                base = rows[preset]["psnr"]
                cells = [f"{base:.2f}"] + [f"{rows[f'{preset}+{m}']['psnr']:.2f} "
                                            f"({rows[f'{preset}+{m}']['psnr'] - base:+.2f})" for m in METHODS]
                labels = [preset] + [f"{preset}+{m}" for m in METHODS]
                errs = " / ".join(f"{rows[k]['mean_step_error']:.4f}" for k in labels)
                fits = " / ".join(f"{rows[k]['fit_s']:.1f}" for k in labels[1:])
                print(f"| {model} | {preset} | {run['settings']['seed']} | " + " | ".join(cells)
                      + f" | {errs} | {fits} |")


def mean_gains(runs: list[dict]) -> None:
    print("| model | preset | none (mean) | Δ affiner | Δ channel | Δ channel (no x_t) |")
    print("|---|---|---|---|---|---|")
    pooled = {m: [] for m in METHODS}
    for model in MODELS:
        for preset in PRESETS:
            base = [rows_of(run, model)[preset]["psnr"] for run in runs]
            cells = []
            for m in METHODS:
                gains = [rows_of(run, model)[f"{preset}+{m}"]["psnr"] - b for run, b in zip(runs, base)]
                pooled[m] += gains
                cells.append(f"{statistics.mean(gains):+.2f} ({min(gains):+.2f} .. {max(gains):+.2f})")
            print(f"| {model} | {preset} | {statistics.mean(base):.2f} | " + " | ".join(cells) + " |")
    cells = [f"{statistics.mean(g):+.2f} (sd {statistics.stdev(g):.2f}; {sum(x < 0 for x in g)}/{len(g)} lower)"
             for g in pooled.values()]
    print("| all | all | — | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    loaded = [json.load(open(path)) for path in sys.argv[1:]]
    per_seed(loaded)
    print()
    mean_gains(loaded)
