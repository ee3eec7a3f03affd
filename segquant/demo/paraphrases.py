"""A second prompt set for the demo models that neither training nor calibration saw: paraphrased
captions of the ten Fashion-MNIST classes, written by hand with wording outside the training templates
and class words of :mod:`segquant.demo.data` (``segquant eval mmdit --prompts paraphrased``)."""

from __future__ import annotations

#: label -> captions (index = Fashion-MNIST label, see ``segquant.demo.data.CLASS_NAMES``).
PARAPHRASES: tuple[tuple[str, ...], ...] = (
    ("a plain cotton tee with short sleeves", "a casual crew-neck tee lying flat",
     "an everyday short sleeve cotton top", "a basic summer tee, front view"),
    ("a pair of long slacks", "denim pants laid out straight", "a pair of formal suit pants",
     "straight-leg jeans seen from the front"),
    ("a warm woolly sweater with long sleeves", "a cozy knit jumper for winter", "a thick wool pullover, flat",
     "a long-sleeved knitwear top"),
    ("an evening gown", "a knee-length frock", "a flowing one-piece gown for a party",
     "a slim cocktail frock"),
    ("a heavy parka for cold weather", "a padded overcoat with buttons", "a long trench coat",
     "an outdoor anorak with a zipper"),
    ("an open-toe summer shoe with straps", "strappy beach footwear", "a flat slipper with thin straps",
     "a light open shoe for hot days"),
    ("a formal blouse with a collar", "a dress shirt with buttons down the front",
     "a flannel shirt with long sleeves", "an office blouse, flat"),
    ("a canvas athletic shoe", "a low-top gym shoe", "a lace-up jogging shoe, side view",
     "a casual tennis shoe"),
    ("a leather tote", "a clutch with a handle", "a satchel for carrying things",
     "a small backpack-style carryall"),
    ("a chelsea boot", "a low leather bootie", "a suede boot that covers the ankle",
     "a winter bootie with a heel, side view"),
)

NAME = "paraphrased"


def paraphrase_prompts(per_class: int = 2) -> tuple[list[str], list[int]]:
    """``(prompts, labels)``: the first ``per_class`` (at most 4) paraphrases of every class, class by
    class interleaved like ``segquant.demo.data.eval_prompts``."""
    n = max(1, min(per_class, min(len(c) for c in PARAPHRASES)))
    pairs = [(PARAPHRASES[label][i], label) for i in range(n) for label in range(len(PARAPHRASES))]
    return [p for p, _ in pairs], [label for _, label in pairs]
