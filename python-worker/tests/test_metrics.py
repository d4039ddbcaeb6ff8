"""Every metric against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from vlmflow_worker.evaluate import metrics as m

TEN = ["2", "2", "2", "two", "3", "3", "4", "4", "4", "4"]  # "two" normalizes to "2": four annotators said 2


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two dogs.", "2 dogs"),  # number word, trailing period
        ("The cat", "cat"),  # article
        ("dont", "don't"),  # contraction
        ("1,000", "1000"),  # digit comma digit: commas removed
        ("yes!", "yes"),  # punctuation glued to a word becomes a space
        ("2.5", "2.5"),  # a period before a digit stays
        ("  red\tand\nblue ", "red and blue"),
        ("left - right", "left right"),  # "- " present: the dash is removed
    ],
)
def test_vqa_normalization(raw, normalized):
    assert m.normalize_vqa_answer(raw) == normalized


def test_vqa_accuracy_single_reference_is_exact_match_after_normalization():
    assert m.vqa_accuracy_one("Two", "2") == 1.0
    assert m.vqa_accuracy_one("a red square", "red square.") == 1.0
    assert m.vqa_accuracy_one("blue", "red") == 0.0


def test_vqa_accuracy_ten_annotators():
    # "3" matches 2 of 10. Official: leaving out one of the 2 matching annotators leaves 1 match (1/3), leaving
    # out one of the 8 others leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6. Plain rule: min(2/3, 1).
    assert m.vqa_accuracy_one("3", TEN) == pytest.approx(0.6)
    assert m.vqa_accuracy_one("3", TEN, leave_one_out=False) == pytest.approx(2 / 3)
    # "2" matches 4: every leave-one-out subset keeps >= 3 matches -> 1.0.
    assert m.vqa_accuracy_one("two", TEN) == pytest.approx(1.0)
    # Exactly 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9; the plain rule gives 1.0.
    three = ["a"] * 3 + ["b"] * 7
    assert m.vqa_accuracy_one("a", three) == pytest.approx(0.9)
    assert m.vqa_accuracy_one("a", three, leave_one_out=False) == 1.0
    assert m.vqa_accuracy_one("5", TEN) == 0.0
    scores = m.vqa_accuracy(["3", "two", "5"], [TEN, TEN, TEN])
    assert scores.value == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert scores.per_sample() == pytest.approx([0.6, 1.0, 0.0])


def test_relaxed_accuracy():
    assert m.relaxed_correct("40", "42")  # |40 - 42| / 42 = 0.0476 <= 0.05
    assert not m.relaxed_correct("44.2", "42")  # 2.2 / 42 = 0.0524
    assert m.relaxed_correct("12%", "0.12")  # percentages are divided by 100
    assert m.relaxed_correct(" Yes", "yes")  # text: exact, case-insensitive
    assert not m.relaxed_correct("yes.", "yes")
    assert not m.relaxed_correct("0.01", "0")  # a zero target has no relative tolerance
    assert m.relaxed_correct("0", "0")
    scores = m.relaxed_accuracy(["40", "44.2", "blue", "7"], ["42", "42", ["red", "Blue"], "7"])
    assert scores.value == pytest.approx(3 / 4)


def test_anls():
    assert m.anls_one("hallo", "hello") == pytest.approx(0.8)  # 1 edit / 5 chars
    assert m.anls_one("xyz", "abc") == 0.0  # NL = 1
    assert m.anls_one("abxy", "abcd") == 0.0  # NL = 0.5 is not below the threshold
    assert m.anls_one("abcx", "abcd") == pytest.approx(0.75)  # NL = 0.25
    assert m.anls_one("  Hello  World ", "hello world") == 1.0  # case and whitespace ignored
    assert m.anls_one("hallo", ["xyz", "hello"]) == pytest.approx(0.8)  # best reference
    assert m.anls(["hallo", "xyz"], ["hello", "abc"]).value == pytest.approx(0.4)


def test_cer_and_wer_are_corpus_rates():
    # "abd" vs "abc": 1 edit / 3 chars; "hello" vs "hello world": 6 insertions / 11 chars -> 7 / 14.
    cer = m.cer(["abd", "hello"], ["abc", "hello world"])
    assert cer.value == pytest.approx(0.5)
    assert cer.per_sample() == pytest.approx([1 / 3, 6 / 11])
    assert not cer.higher_is_better
    # 1 deletion / 4 words + 1 substitution / 2 words -> 2 / 6.
    wer = m.wer(["the cat sat", "a b"], ["the cat sat down", "a c"])
    assert wer.value == pytest.approx(1 / 3)
    assert m.wer([""], ["two words"]).value == pytest.approx(1.0)


def test_bleu4():
    # Hypothesis longer than the reference (7 vs 6), no brevity penalty; clipped precisions 6/7, 5/6, 4/5, 3/4.
    long = m.bleu4(["the cat sat on the mat today"], ["the cat sat on the mat"])
    assert long.value == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    # All precisions 1, length 5 vs 6: brevity penalty exp(1 - 6/5).
    short = m.bleu4(["the cat sat on the"], ["the cat sat on the mat"])
    assert short.value == pytest.approx(math.exp(-0.2))
    # Corpus level: sums first. Lengths 12 vs 12; precisions 11/12, 9/10, 7/8, 5/6.
    both = m.bleu4(
        ["the cat sat on the mat today", "the cat sat on the"], ["the cat sat on the mat", "the cat sat on the mat"]
    )
    assert both.value == pytest.approx((11 / 12 * 9 / 10 * 7 / 8 * 5 / 6) ** 0.25)
    # Closest reference length: 5 words against refs of 4 and 7 words -> 4, so no brevity penalty.
    closest = m.bleu4(["a b c d e"], [["a b c d", "a b c d e f g"]])
    assert closest.stats[0][1] == 4
    # No 4-gram in common -> (practically) zero, and clipping: "the the the" against "the cat" counts 1 match.
    assert m.bleu4(["the cat sat on the mat"], ["the cat is on the mat"]).value < 1e-3
    assert m.bleu4(["the the the"], ["the cat"]).stats[0][2] == 1


def test_rouge_l():
    # LCS "the cat on the mat" = 5; P = R = 5/6, so F = 5/6.
    assert m.rouge_l_one("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 1, R = 2/3: (1 + 1.44) * 2/3 / (2/3 + 1.44) = 0.77215...
    assert m.rouge_l_one("the cat", "the cat sat") == pytest.approx(2.44 * (2 / 3) / (2 / 3 + 1.44))
    # Best precision and best recall are taken over references separately.
    assert m.rouge_l_one("the cat", ["the cat sat", "dog"]) == pytest.approx(2.44 * (2 / 3) / (2 / 3 + 1.44))
    assert m.rouge_l_one("", "the cat") == 0.0


def test_cider_d():
    # Two images; refs "a cat", "a dog": document frequency a:2, cat:1, "a cat":1, dog:1, "a dog":1; L = log 2.
    # Identical 2-word captions: weight(a) = 0, the rest L; cosine 1 for n=1 and n=2, 0 for n=3, 4 (no such
    # n-grams), no length penalty: 10 * (1 + 1 + 0 + 0) / 4 = 5.
    same = m.cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]])
    assert same.per_sample() == pytest.approx([5.0, 5.0])
    # "a big cat" against "a cat": unigram vector (big: L, cat: L) vs (cat: L) -> cosine 1/sqrt(2); no bigram in
    # common; length (2-grams) 2 vs 1 -> penalty exp(-1/72). 10 * (0.7071 * 0.98621) / 4.
    scores = m.cider_d(["a big cat", "a dog"], [["a cat"], ["a dog"]])
    first = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert scores.per_sample() == pytest.approx([first, 5.0])
    assert scores.value == pytest.approx((first + 5.0) / 2)
    # Several references: similarities are averaged over them. "a cat" against ["a cat", "a dog"] in a corpus
    # where df(a)=2, df(cat)=1, df(dog)=2 (both images mention a dog).
    multi = m.cider_d(["a cat", "a dog"], [["a cat", "a dog"], ["a dog"]])
    # df: a 2, cat 1, dog 2, "a cat" 1, "a dog" 2 -> only cat and "a cat" carry weight L.
    # vs "a cat": 1 (n=1) + 1 (n=2); vs "a dog": all weights 0 -> 0. Mean over refs: (2/4 * 10) / 2 = 2.5.
    assert multi.per_sample()[0] == pytest.approx(2.5)


def test_preference_accuracy_and_rewards():
    rewards = m.implicit_rewards([-1.0, -2.0], [-1.5, -1.0], beta=0.1)
    assert rewards == pytest.approx([0.05, -0.1])
    acc = m.preference_accuracy([1.0, 2.0, 3.0, 1.0], [0.0, 2.5, 1.0, 1.0])  # right, wrong, right, tie (half)
    assert acc.value == pytest.approx(2.5 / 4)
    assert m.preference_accuracy([0.0] * 3, [0.0] * 3).value == 0.5  # the reference itself: chance
    assert m.chosen_pick_rate(["Two.", "red", "3"], ["2", "blue", "three"]).value == pytest.approx(2 / 3)
    assert m.reward_margin([1.0, 2.0, 3.0], [0.0, 2.5, 1.0]).value == pytest.approx(2.5 / 3)


def test_bootstrap_interval():
    constant = m.vqa_accuracy(["a"] * 20, ["a"] * 20)
    ci = m.bootstrap_ci(constant, samples=200)
    assert (ci.value, ci.low, ci.high) == (1.0, 1.0, 1.0)
    half = m.relaxed_accuracy(["1", "2"] * 50, ["1", "1"] * 50)  # 50 of 100 right; sd of the mean 0.05
    ci = m.bootstrap_ci(half, samples=1000, seed=1)
    assert ci.value == 0.5
    assert 0.38 < ci.low < 0.45 and 0.55 < ci.high < 0.62
    # Corpus metrics are re-aggregated, not averaged: the interval of CER stays around the corpus figure.
    cer = m.cer(["abd", "hello"] * 10, ["abc", "hello world"] * 10)
    ci = m.bootstrap_ci(cer, samples=300)
    assert ci.low <= 0.5 <= ci.high


def test_sign_test_exact_values():
    assert m.sign_test(3, 1) == pytest.approx(10 / 16)  # 2 * (C(4,0) + C(4,1)) / 16
    assert m.sign_test(0, 0) == 1.0
    assert m.sign_test(10, 0) == pytest.approx(2 / 1024)


def test_paired_comparison_says_tuned_beats_base():
    refs = ["yes"] * 50
    base = m.vqa_accuracy(["no"] * 50, refs)
    tuned = m.vqa_accuracy(["yes"] * 40 + ["no"] * 10, refs)
    result = m.paired_comparison(base, tuned, samples=500)
    assert result.verdict == "better"
    assert result.delta == pytest.approx(0.8)
    assert (result.wins, result.losses) == (40, 0)
    assert result.p_value == 0.0 and result.sign_test_p == pytest.approx(2 * 0.5**40)
    same = m.paired_comparison(base, base, samples=100)
    assert same.verdict == "no significant difference" and same.delta == 0.0


def test_paired_comparison_reads_error_rates_the_right_way_round():
    refs = ["hello world"] * 30
    base = m.cer(["hallo wurld"] * 30, refs)
    tuned = m.cer(["hello world"] * 25 + ["hallo wurld"] * 5, refs)
    result = m.paired_comparison(base, tuned, samples=300)
    assert result.delta < 0 and result.verdict == "better" and result.wins == 25
    worse = m.paired_comparison(tuned, base, samples=300)
    assert worse.verdict == "worse"


def test_cer_edit_counts_agree_with_jiwer_on_random_text() -> None:
    """Two libraries, one answer: RapidFuzz's distance (what cer uses) and jiwer's character alignment."""
    import random

    import jiwer

    rng = random.Random(0)
    alphabet = "abcde"  # no spaces: jiwer strips them at the ends before aligning
    for _ in range(200):
        ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        hyp = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        out = jiwer.process_characters(ref, hyp)
        assert m.levenshtein(hyp, ref) == out.substitutions + out.deletions + out.insertions, (ref, hyp)
