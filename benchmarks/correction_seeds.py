"""Tables of repeated ``segquant eval --correction`` runs (one per ``--seed``): PSNR per model / preset / seed,
the mean change each correction makes over the seeds (one seed's noise is of the size of the effects), and how
much each correction lowers the per-step error over all steps but the last (the last step does not reach the
images, see BENCHMARKS.md "the oracle ceiling").

    python benchmarks/correction_seeds.py --presets w8a8 --methods affiner,ptqd,tac \\
        benchmarks/results/affiner_sweep/w8a8_seeds/seed{0,1,2}/results.json
"""

import argparse
import json
import statistics

MODELS = ("mmdit", "flux", "unet")


def models_in(runs: list[dict]) -> list[str]:
    """The demo models every run evaluated, in the usual order."""
    return [model for model in MODELS if all(model in run["models"] for run in runs)]


def rows_of(run: dict, model: str) -> dict:
    return {r["config"]: r for r in run["models"][model]["rows"]}


def every_cell(runs: list[dict], presets: list[str]):
    """``(model, preset, run)`` of every table row of :func:`per_seed` and :func:`early_step_change`, in order."""
    return ((model, preset, run) for model in models_in(runs) for preset in presets for run in runs)


def strength_note(row: dict) -> str:
    """``" @0.5"``: the strength a held-out choice (``validation_prompts``) applied; ``""`` for full strength."""
    strength = row.get("strength")
    return "" if strength in (None, 1.0) else f" @{strength:g}"


def per_seed(runs: list[dict], presets: list[str], methods: list[str]) -> None:
    """PSNR (change against the uncorrected row), mean per-step error and fit seconds of every run."""
    names = " | ".join(f"+ {m}" for m in methods)
    print(f"| model | preset | seed | none | {names} | ε rel.err none / {' / '.join(methods)} "
          f"| fit s {' / '.join(methods)} |")
    print("|---" * (6 + len(methods)) + "|")
    for model, preset, run in every_cell(runs, presets):
        rows = rows_of(run, model)
        base = rows[preset]["psnr"]
        labels = [f"{preset}+{m}" for m in methods]
        cells = [f"{base:.2f}"] + [f"{rows[k]['psnr']:.2f} ({rows[k]['psnr'] - base:+.2f})" for k in labels]
        errs = " / ".join(f"{rows[k]['mean_step_error']:.4f}" for k in [preset] + labels)
        fits = " / ".join(f"{rows[k]['fit_s']:.1f}" + strength_note(rows[k]) for k in labels)
        print(f"| {model} | {preset} | {run['settings']['seed']} | " + " | ".join(cells) + f" | {errs} | {fits} |")


def mean_gains(runs: list[dict], presets: list[str], methods: list[str]) -> None:
    """Mean (min .. max) PSNR change per model and preset, and pooled over all of them."""
    print(f"| model | preset | none (mean) | {' | '.join(f'Δ {m}' for m in methods)} |")
    print("|---" * (3 + len(methods)) + "|")
    pooled = {m: [] for m in methods}
    for model in models_in(runs):
        for preset in presets:
            base = [rows_of(run, model)[preset]["psnr"] for run in runs]
            cells = []
            for m in methods:
                gains = [rows_of(run, model)[f"{preset}+{m}"]["psnr"] - b for run, b in zip(runs, base)]
                pooled[m] += gains
                cells.append(f"{statistics.mean(gains):+.2f} ({min(gains):+.2f} .. {max(gains):+.2f})")
            print(f"| {model} | {preset} | {statistics.mean(base):.2f} | " + " | ".join(cells) + " |")
    cells = [f"{statistics.mean(g):+.2f} (sd {statistics.stdev(g):.2f}; {sum(x < 0 for x in g)}/{len(g)} lower)"
             for g in pooled.values()]
    print("| all | all | — | " + " | ".join(cells) + " |")


def early_step_change(runs: list[dict], presets: list[str], methods: list[str]) -> None:
    """Per cell: how much lower each correction's summed per-step error is, steps 0..n-2 (negative: higher)."""
    print(f"| model | preset | seed | {' | '.join(f'{m}: error lower, steps 0..n-2' for m in methods)} |")
    print("|---" * (3 + len(methods)) + "|")
    for model, preset, run in every_cell(runs, presets):
        errors = run["models"][model]["step_errors"]
        base = sum(errors[preset][:-1])
        cells = [f"{100 * (1 - sum(errors[f'{preset}+{m}'][:-1]) / base):+.1f} %" for m in methods]
        print(f"| {model} | {preset} | {run['settings']['seed']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results.json of each run")
    parser.add_argument("--presets", default="w4a8,w4a4")
    parser.add_argument("--methods", default="affiner,ptqd,tac")
    args = parser.parse_args()
    loaded = [json.load(open(path)) for path in args.runs]
    presets, methods = args.presets.split(","), args.methods.split(",")
    per_seed(loaded, presets, methods)
    print()
    mean_gains(loaded, presets, methods)
    print()
    early_step_change(loaded, presets, methods)


if __name__ == "__main__":
    main()
