from segquant.demo.data import CLASS_NAMES, all_captions
from segquant.demo.paraphrases import PARAPHRASES, paraphrase_prompts


def test_paraphrases_are_unseen_and_labelled_class_by_class():
    seen = set(all_captions()[0])
    assert len(PARAPHRASES) == len(CLASS_NAMES)
    assert not seen & {p for caps in PARAPHRASES for p in caps}
    prompts, labels = paraphrase_prompts(2)
    assert labels == list(range(10)) * 2 and prompts[3] == PARAPHRASES[3][0] and prompts[13] == PARAPHRASES[3][1]
    assert len(paraphrase_prompts(9)[0]) == 40
