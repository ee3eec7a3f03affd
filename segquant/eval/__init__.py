"""Evaluation: full precision vs quantization presets with the same prompts, seeds and steps.

``harness.evaluate`` runs the comparison, ``metrics`` holds the image metrics, ``report`` writes the
Markdown / JSON tables and PNGs. Metrics libraries are imported only when used.
"""
