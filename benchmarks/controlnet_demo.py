"""Does the shipped demo ControlNet follow its control? Edge F1 of full-precision samples, with and without it.

For the evaluation prompts of ``segquant eval <model> --controlnet`` (``--per-class`` per class, control =
Canny edges of a Fashion-MNIST test image of the prompt's class) this prints the mean edge F1
(:func:`segquant.eval.edges.edge_f1`, 1 px tolerance) of the full-precision images generated

- with the ControlNet and the prompt's own control,
- with the ControlNet switched off (``controlnet_conditioning_scale=0``: the plain demo model),
- with the ControlNet and the control of *another* image of the same class (shifted by one),

all from the same seeds. A ControlNet that follows its control scores clearly higher in the first row.

Usage: python benchmarks/controlnet_demo.py [--model mmdit] [--per-class 2] [--steps 10]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mmdit")
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args()

    from segquant.demo.controlnet import demo_controls, load_demo_controlnet_pipeline
    from segquant.demo.data import eval_prompts
    from segquant.eval.edges import edge_f1

    pipe = load_demo_controlnet_pipeline(args.model)
    prompts, labels = eval_prompts(args.per_class)
    controls = demo_controls(labels)
    others = demo_controls(labels, offset=1)

    def f1(control, scale):
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        images = pipe(prompts, control_image=control, controlnet_conditioning_scale=scale, generator=gens,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt").images
        return float(edge_f1(images, controls).mean())

    print(f"{args.model}: {len(prompts)} prompts, {args.steps} steps, CFG {args.guidance}; edge F1 vs the prompt's control")
    print(f"  ControlNet, own control:           {f1(controls, 1.0):.3f}")
    print(f"  ControlNet off (scale 0):          {f1(controls, 0.0):.3f}")
    print(f"  ControlNet, another image's edges: {f1(others, 1.0):.3f}")


if __name__ == "__main__":
    main()
