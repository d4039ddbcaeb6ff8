"""BLEU-4, ROUGE-L and CIDEr-D against pycocoevalcap (coco-caption's own scorers, the field standard) on a fixed set.

pycocoevalcap's Cider is CIDEr-D (clipped tf-idf, Gaussian length penalty with sigma 6, times 10); Bleu(4) and Rouge
are pure Python. Its tokenizer needs Java, so both sides score the tokens of our `caption_tokens`, and that
tokenizer is checked separately against PTB output recorded from the real one (and live when Java is installed).
"""

from __future__ import annotations

import shutil

import pytest

# A dev dependency (requirements.lock; scripts/setup.sh installs it). Imported plainly, not skipped when missing,
# so the check cannot quietly stop running.
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from vlmflow_worker.evaluate import metrics as m

# COCO-style items: one candidate, three to five references. Chosen to exercise what the scorers treat specially:
# exact and near matches, no overlap, candidates shorter than every reference (brevity penalty), longer ones
# (length penalty), repeated words (clipping), one- and two-word candidates (no 3- or 4-grams), n-grams shared by
# many images (low idf), punctuation, hyphens, contractions and numbers (tokenization).
CAPTIONS: list[tuple[str, list[str]]] = [
    (
        "A man riding a wave on top of a surfboard.",
        [
            "A man riding a wave on top of a surfboard.",
            "A surfer rides a large wave in the ocean.",
            "A person on a surfboard riding a wave.",
            "Surfer in a black wetsuit catching a wave.",
            "A man surfing on a big blue wave.",
        ],
    ),
    (
        "a giraffe standing next to a tree",
        [
            "A giraffe eating leaves from the top of a tree.",
            "A tall giraffe stands beside a leafy tree.",
            "Giraffe standing in a field next to trees.",
        ],
    ),
    (
        "Two dogs playing with a frisbee in the park.",
        [
            "Two dogs run after a red frisbee on the grass.",
            "A pair of dogs play with a frisbee in a park.",
            "Dogs chasing a flying disc in a grassy park.",
            "Two brown dogs playing in the park.",
        ],
    ),
    (
        "a pizza",
        [
            "A pizza with cheese, tomatoes and basil on a plate.",
            "A close up of a pizza on a wooden table.",
            "A freshly baked pizza sitting on a table.",
        ],
    ),
    (
        "A cat cat cat sitting on a couch.",
        [
            "A cat sitting on a couch next to a pillow.",
            "A grey cat lounging on the sofa.",
            "A cat resting on a living room couch.",
        ],
    ),
    (
        "A red double-decker bus driving down a city street.",
        [
            "A red double-decker bus on a busy street.",
            "A double decker bus drives down the road.",
            "A tall red bus travelling through the city.",
            "Red London bus on a city street.",
        ],
    ),
    (
        "A woman's hand holding a smart-phone; it's 50% charged.",
        [
            "A woman holds a smartphone in her hand.",
            "Someone's hand is holding a cell phone.",
            "A hand holding a phone showing the battery at 50%.",
        ],
    ),
    (
        "A plate with a hot dog, fries and ketchup...",
        [
            "A hot dog and french fries on a plate.",
            "A plate of fries with a hot dog and ketchup.",
            "Fast food: a hot dog, fries, and a side of ketchup.",
            "A hotdog with fries on a white plate.",
        ],
    ),
    (
        "Kids aren't allowed to play on the 3-year-old boy's toys (really).",
        [
            "A 3-year-old boy playing with his toys on the floor.",
            "A little boy plays with toys.",
            "A child sitting among toys in a playroom.",
        ],
    ),
    (
        "a train",
        [
            "A passenger train pulling into a station.",
            "A train on the tracks near a platform.",
            "A long train at a railway station.",
        ],
    ),
    (
        "An elephant walking through tall grass near a river bank with some trees in the far background.",
        [
            "An elephant walking in tall grass.",
            "A large elephant near a river.",
            "An elephant in the grass by the water.",
        ],
    ),
    (
        "A bowl of fruit: apples, bananas, and oranges.",
        [
            "A bowl of fruit with apples, bananas and oranges.",
            "Fruit in a bowl on a kitchen counter.",
            "Bananas, apples and oranges in a glass bowl.",
            "A fruit bowl full of bananas and apples.",
        ],
    ),
    (
        "A baseball player swinging a bat at a ball.",
        [
            "A baseball player swings his bat at the pitch.",
            "A batter swinging at a baseball.",
            "A man at home plate swinging a bat.",
            "The batter hits the ball during a game.",
        ],
    ),
    (
        "snow covered mountains under a blue sky",
        [
            "A skier going down a snowy slope.",
            "A person skiing down a mountain.",
            "A skier on a snow covered hill.",
        ],
    ),
    (
        "A kitchen with a stove, a sink and a refrigerator.",
        [
            "A kitchen with a stove, sink and refrigerator.",
            "A clean kitchen with white appliances.",
            "A small kitchen with a sink and a stove.",
            "A kitchen with wooden cabinets and a fridge.",
        ],
    ),
    (
        "A stop sign on the corner of a street.",
        [
            'A sign reads "STOP" at the corner of a street.',
            "A red stop sign at an intersection.",
            "A stop sign on a street corner.",
        ],
    ),
    (
        "Two zebras graze in a field.",
        [
            "Two zebras (one young) graze in a field.",
            "A pair of zebras grazing on grass.",
            "Zebras eating grass in an open field.",
        ],
    ),
    (
        "A man and a woman cutting a cake at a wedding.",
        [
            "A bride and groom cutting their wedding cake.",
            "A couple cuts a cake at their wedding reception.",
            "A man and woman slicing a white cake.",
            "Newlyweds cutting a tiered cake.",
        ],
    ),
    (
        "A laptop computer sitting on top of a desk.",
        [
            "A laptop on a wooden desk next to a lamp.",
            "An open laptop computer on a desk.",
            "A desk with a laptop, a mouse and a cup of coffee.",
        ],
    ),
    (
        "a teddy bear",
        [
            "A brown teddy bear sitting on a bed.",
            "A stuffed teddy bear on a pillow.",
            "A teddy bear lying on a white bed.",
        ],
    ),
    (
        "A horse pulling a cart down a dirt road on a sunny day.",
        [
            "A horse pulling a cart on a dirt road.",
            "A horse-drawn carriage on a country road.",
            "A man driving a horse and cart down a road.",
            "A brown horse pulls a wooden cart.",
        ],
    ),
    (
        "A group of people flying kites on a beach.",
        [
            "People flying kites on a windy beach.",
            "A group of people on the beach with kites.",
            "Several colourful kites in the sky over a beach.",
            "Kites flying above people on the sand.",
        ],
    ),
    (
        "Is that a bird?? It's a blue bird on a branch!!",
        [
            "A small blue bird perched on a branch.",
            "A bird sitting on a tree branch.",
            "A bluebird on a thin branch.",
        ],
    ),
    (
        "A clock tower at 10:30 in the U.S. city center.",
        [
            "A tall clock tower in the middle of a city.",
            "A clock tower showing half past ten.",
            "A brick clock tower against the sky.",
        ],
    ),
    (
        "...",  # a candidate with no words at all scores 0 everywhere
        [
            "A man sitting on a bench in a park.",
            "A person resting on a park bench.",
            "Someone sitting alone on a wooden bench.",
        ],
    ),
]

# What pycocoevalcap's PTBTokenizer (CoreNLP 3.4.1 via Java, lower-cased, punctuation dropped) returned for these,
# recorded by running it; `caption_tokens` must reproduce them without Java.
PTB_RECORDED = {
    "A man in a black-and-white T-shirt isn't smiling.": "a man in a black-and-white t-shirt is n't smiling",
    "The dog's ball costs $2.50, 100% sure; 1,000 cats & dogs (maybe) o'clock...": (
        "the dog 's ball costs $ 2.50 100 % sure 1,000 cats & dogs -lrb- maybe -rrb- o'clock"
    ),
    "Two-story house at 3/4 mile e-mail: x@y.com #1 \"quoted\" it's they're we'll I'd I'm can't cannot gonna": (
        "two-story house at 3/4 mile e-mail x@y.com # 1 quoted it 's they 're we 'll i 'd i 'm ca n't can not gon na"
    ),
    "cats/dogs and/or the U.S. flag, Mr. Smith and Dr. Who at St. Louis etc.": (
        "cats/dogs and/or the u.s. flag mr. smith and dr. who at st. louis etc."
    ),
    "The dogs' owners won't wait -- they've gone - really?! Yes: 10:30 am.": (
        "the dogs owners wo n't wait they 've gone really ?! yes 10:30 am"
    ),
    "A [red] {blue} car... near the 'old' building": "a -lsb- red -rsb- -lcb- blue -rcb- car near the old building",
    "the 1990s and '90s style... 4x4 truck, a 3-year-old boy": "the 1990s and '90s style 4x4 truck a 3-year-old boy",
    "hello_world foo+bar a=b x*y 50/50 A.M. p.m. i.e. e.g. Ave. Jr. vs. Inc.": (
        "hello_world foo + bar a = b x * y 50/50 a.m. p.m. i.e. e.g. ave. jr. vs. inc."
    ),
    "cheese,tomatoes and basil yes:no answers": "cheese tomatoes and basil yes no answers",
    "he says no. The U.S. team from AT&T plays rock&roll": "he says no the u.s. team from at&t plays rock & roll",
    "born on Mar. 5 in Dec. at No. 5 street": "born on mar. 5 in dec. at no. 5 street",
    "a 4.5-star hotel T.V. tv's it's 5 o'clock rock 'n' roll": (
        "a 4.5-star hotel t.v. tv 's it 's 5 o'clock rock 'n' roll"
    ),
    "send e-mail. visit www.google.com at 3. pay $5 or 5$ #hashtag the 80's": (
        "send e-mail visit www.google.com at 3 pay $ 5 or 5 $ #hashtag the 80 's"
    ),
    "Shouldn't it be wanna gotta lemme gimme I'd've": "should n't it be wan na got ta lem me gim me i 'd 've",
    "Is that a cat?? No, it's a dog!!": "is that a cat ?? no it 's a dog !!",
    "Don't DON'T Can't It's": "do n't do n't ca n't it 's",
}


def _coco_inputs(captions: list[tuple[str, list[str]]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's layout (image id -> list of space-joined token strings), from our tokens."""

    def join(text: str) -> str:
        return " ".join(m.caption_tokens(text))

    gts = {i: [join(r) for r in refs] for i, (_, refs) in enumerate(captions)}
    res = {i: [join(c)] for i, (c, _) in enumerate(captions)}
    return gts, res


PREDICTIONS = [c for c, _ in CAPTIONS]
REFERENCES = [r for _, r in CAPTIONS]
GTS, RES = _coco_inputs(CAPTIONS)
# Float noise only: both sides do the same arithmetic, in a different order (sums of logs vs products, numpy means).
TOLERANCE = 1e-9


def test_the_set_is_big_enough_and_has_several_references_per_item() -> None:
    assert len(CAPTIONS) >= 20
    assert all(len(refs) >= 3 for refs in REFERENCES)


@pytest.mark.parametrize(("text", "ptb"), PTB_RECORDED.items())
def test_caption_tokens_reproduce_recorded_ptb_tokenizer_output(text: str, ptb: str) -> None:
    assert " ".join(m.caption_tokens(text)) == ptb


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTBTokenizer runs CoreNLP under Java")
def test_caption_tokens_match_the_live_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [*PTB_RECORDED, *PREDICTIONS, *(r for refs in REFERENCES for r in refs)]
    ptb = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    differ = [(t, ptb[i][0], " ".join(m.caption_tokens(t))) for i, t in enumerate(texts)]
    assert [d for d in differ if d[1] != d[2]] == []


def test_bleu4_matches_pycocoevalcap() -> None:
    (_, _, _, corpus), per_image = Bleu(4).compute_score(GTS, RES, verbose=0)
    ours = m.bleu4(PREDICTIONS, REFERENCES)
    assert ours.value == pytest.approx(corpus, abs=TOLERANCE)
    # coco-caption's per-image BLEU-4 is each image's own clipped counts and brevity penalty: one row aggregated.
    assert ours.per_sample() == pytest.approx(per_image[3], abs=TOLERANCE)
    assert 0.1 < corpus < 0.9  # neither degenerate end: the set exercises partial matches


def test_rouge_l_matches_pycocoevalcap() -> None:
    mean, per_image = Rouge().compute_score(GTS, RES)
    ours = m.rouge_l(PREDICTIONS, REFERENCES)
    assert ours.value == pytest.approx(float(mean), abs=TOLERANCE)
    assert ours.per_sample() == pytest.approx(per_image.tolist(), abs=TOLERANCE)


def test_cider_d_matches_pycocoevalcap() -> None:
    mean, per_image = Cider().compute_score(GTS, RES)
    ours = m.cider_d(PREDICTIONS, REFERENCES)
    assert ours.value == pytest.approx(float(mean), abs=TOLERANCE)
    assert ours.per_sample() == pytest.approx(per_image.tolist(), abs=TOLERANCE)
    assert max(per_image) > 1.0  # the exact match scores high: idf weights are not all zero


def test_agreement_holds_on_every_subset_size() -> None:
    """CIDEr-D's idf depends on the corpus, BLEU's brevity penalty on corpus totals: compare on prefixes too."""
    for n in (2, 5, 13):
        gts, res = _coco_inputs(CAPTIONS[:n])
        preds, refs = PREDICTIONS[:n], REFERENCES[:n]
        assert m.cider_d(preds, refs).value == pytest.approx(float(Cider().compute_score(gts, res)[0]), abs=TOLERANCE)
        bleu = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
        assert m.bleu4(preds, refs).value == pytest.approx(bleu, abs=TOLERANCE)
