"""Evaluation metrics, confidence intervals and the paired base-vs-tuned comparison.

Each metric turns (predictions, references) into a `Scores`: one row of sufficient statistics per sample and the
function that aggregates any subset of rows into the corpus figure. That one shape serves the headline number, the
per-sample score in the gallery, the bootstrap interval (resample rows) and the paired comparison (resample the
same rows for base and tuned), including corpus-level metrics such as BLEU and CER whose figure is not a mean.

Definitions follow the reference implementations:
- VQA accuracy: the official VQA evaluation (answer normalization: punctuation, articles, number words,
  contractions; min(#matches / 3, 1) with several annotators, averaged over the leave-one-annotator-out subsets).
- ChartQA relaxed accuracy: exact match, or within 5 % of the target when both parse as numbers.
- ANLS (DocVQA): 1 - normalized Levenshtein distance, 0 when that distance is 0.5 or more; best reference.
- CER / WER: corpus error rates, total edits over total reference characters / words (edit distance by RapidFuzz,
  word alignment by jiwer).
- BLEU-4, ROUGE-L, CIDEr-D: as in coco-caption (pycocoevalcap's Bleu(4), Rouge, Cider; its Cider is CIDEr-D),
  on tokens from a Python port of its PTB tokenization (no Java); tests/test_metrics_reference.py checks all four
  against pycocoevalcap itself.
- Preference accuracy: share of pairs whose implicit DPO reward of the chosen answer beats the rejected one.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein

References = Sequence[str] | str


def _as_list(refs: References) -> list[str]:
    return [refs] if isinstance(refs, str) else list(refs)


@dataclass
class Scores:
    """Per-sample sufficient statistics of one metric and how to aggregate them."""

    name: str
    stats: np.ndarray  # shape (n_samples, k)
    aggregate: Callable[[np.ndarray], float]
    higher_is_better: bool = True

    @property
    def value(self) -> float:
        return self.aggregate(self.stats)

    def per_sample(self) -> list[float]:
        return [self.aggregate(self.stats[i : i + 1]) for i in range(len(self.stats))]

    def __len__(self) -> int:
        return len(self.stats)


def _mean(stats: np.ndarray) -> float:
    return float(stats[:, 0].mean()) if len(stats) else float("nan")


def _mean_scores(name: str, values: Sequence[float], higher_is_better: bool = True) -> Scores:
    return Scores(name, np.asarray(values, dtype=float).reshape(-1, 1), _mean, higher_is_better)


# ---------------------------------------------------------------------------------------------------------------
# VQA accuracy (official VQA evaluation, vqaEval.py)

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# Verbatim from vqaEval.py; "(?!<=\d)" there is a lookahead (not the lookbehind it looks like): a period is
# dropped unless a digit follows, so "2.5" keeps its point and "dog." loses it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA answer normalization: "Two dogs." -> "2 dogs", "The cat" -> "cat", "dont" -> "don't"."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_accuracy_one(prediction: str, answers: References, leave_one_out: bool = True) -> float:
    """VQA accuracy of one prediction.

    One reference answer: 1 if the normalized strings match, else 0. Several (the VQA v2 layout has ten
    annotators): min(#matching annotators / 3, 1); with `leave_one_out` (the official evaluation) that is averaged
    over the subsets that leave one annotator out, so 3 of 10 matching gives 0.9, not 1.0.
    """
    answers = [normalize_vqa_answer(a) for a in _as_list(answers)]
    pred = normalize_vqa_answer(prediction)
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer per sample")
    if len(answers) == 1:
        return float(pred == answers[0])
    if not leave_one_out:
        return min(1.0, sum(a == pred for a in answers) / 3)
    matches = sum(a == pred for a in answers)
    # Leaving out a matching annotator leaves matches - 1 matches; leaving out another leaves all of them.
    per_subset = [min(1.0, (matches - (a == pred)) / 3) for a in answers]
    return sum(per_subset) / len(per_subset)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[References], leave_one_out: bool = True) -> Scores:
    return _mean_scores(
        "vqa_accuracy", [vqa_accuracy_one(p, r, leave_one_out) for p, r in zip(predictions, references, strict=True)]
    )


# ---------------------------------------------------------------------------------------------------------------
# ChartQA relaxed accuracy (Methani et al.; as in pix2struct's `relaxed_correctness`)


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """Numbers within 5 % of a non-zero target are right ("41.5" for 42); anything else must match exactly,
    ignoring case and surrounding whitespace (a target of 0 has no relative tolerance)."""
    prediction, target = prediction.strip(), target.strip()
    pred_f, target_f = _to_float(prediction), _to_float(target)
    if pred_f is not None and target_f:
        return abs(pred_f - target_f) / abs(target_f) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(predictions: Sequence[str], references: Sequence[References]) -> Scores:
    values = [
        float(max(relaxed_correct(p, t) for t in _as_list(r))) for p, r in zip(predictions, references, strict=True)
    ]
    return _mean_scores("relaxed_accuracy", values)


# ---------------------------------------------------------------------------------------------------------------
# ANLS (DocVQA)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1), by RapidFuzz's bit-parallel C implementation:
    a page of OCR text against its reference takes microseconds, where a Python loop over n x m cells took seconds."""
    return Levenshtein.distance(a, b)


def anls_one(prediction: str, answers: References, threshold: float = 0.5) -> float:
    """max over references of 1 - NL, where NL = edit distance / longer length on lower-cased, whitespace-collapsed
    strings, and a reference with NL >= threshold scores 0."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for answer in _as_list(answers):
        ref = " ".join(answer.lower().split())
        longest = max(len(pred), len(ref))
        nl = levenshtein(pred, ref) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def anls(predictions: Sequence[str], references: Sequence[References], threshold: float = 0.5) -> Scores:
    return _mean_scores("anls", [anls_one(p, r, threshold) for p, r in zip(predictions, references, strict=True)])


# ---------------------------------------------------------------------------------------------------------------
# OCR error rates (corpus level: total edits / total reference length)


def _error_rate(stats: np.ndarray) -> float:
    total = stats[:, 1].sum()
    return float(stats[:, 0].sum() / total) if total else float("nan")


def _first(refs: References) -> str:
    return _as_list(refs)[0]


def cer(predictions: Sequence[str], references: Sequence[References]) -> Scores:
    """Character error rate against the first reference of each sample."""
    rows = []
    for p, r in zip(predictions, references, strict=True):
        ref = _first(r)
        rows.append((levenshtein(p, ref), len(ref)))
    return Scores("cer", np.asarray(rows, dtype=float).reshape(-1, 2), _error_rate, higher_is_better=False)


def wer(predictions: Sequence[str], references: Sequence[References]) -> Scores:
    """Word error rate (whitespace words) against the first reference of each sample, computed with jiwer."""
    rows = []
    for p, r in zip(predictions, references, strict=True):
        ref = _first(r)
        if not ref.split():
            rows.append((len(p.split()), 0))
            continue
        out = jiwer.process_words(ref, p if p.strip() else "")
        rows.append((out.substitutions + out.deletions + out.insertions, len(ref.split())))
    return Scores("wer", np.asarray(rows, dtype=float).reshape(-1, 2), _error_rate, higher_is_better=False)


# ---------------------------------------------------------------------------------------------------------------
# Captioning: BLEU-4, ROUGE-L, CIDEr-D (coco-caption definitions)

# coco-caption tokenizes with Stanford CoreNLP's PTBTokenizer (Java), lower-cases, then drops punctuation tokens.
# These rules reproduce what that tokenizer does to captions, so scores are comparable with published ones: hyphenated
# words and numbers stay whole ("t-shirt", "2.50", "1,000"), clitics split off ("is n't", "dog 's", "ca n't"),
# symbols become tokens ("$ 5", "100 %"), and brackets become "-lrb-" / "-rrb-" (coco-caption's filter lists them
# upper-case, so after lower-casing they survive; kept, as published scores include them).
_ABBREVIATIONS = r"mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd|co|corp|ave|mt|ft|jan|feb|mar|apr|aug|sept?|oct|nov|dec"
_PTB_TOKEN = re.compile(
    rf"""
      (?:[^\W\d_]\.){{2,}}                       # acronyms keep their periods: u.s., a.m., e.g.
    | (?:{_ABBREVIATIONS})\.(?!\w)               # so do common abbreviations: mr., st., etc.
    | no\.(?=\s*\d)                              # "no. 5", but a sentence-final "no." loses it
    | '\d\ds\b | 'n'                              # '90s, rock 'n' roll
    | (?-i:[A-Z]+&[A-Z]+)                        # AT&T (but "rock&roll" is "rock & roll")
    | \#[^\W\d_]\w*                              # #hashtag (but "#1" is "# 1")
    | \d+(?:[.,:/]\d+)+(?:-[\w@]+)*               # numbers: 2.50, 1,000, 10:30, 3/4, 4.5-star
    | [\w@]+(?:[-/.'][\w@]+)*                     # words with inner hyphens, slashes, points: t-shirt, x@y.com
    | [?!]{{2,}}                                 # "?!" is one token (only a lone "?" or "!" is dropped)
    | \.{{2,}} | -{{2,}}                          # ellipses and dashes (dropped)
    | \S                                         # any other symbol on its own: $ % & # + = ( )
    """,
    re.VERBOSE | re.IGNORECASE,
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {
    "cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
    "lemme": ["lem", "me"], "gimme": ["gim", "me"],
}  # fmt: skip
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# coco-caption's PUNCTUATIONS after PTB's quote normalization (a '"' becomes `` or '').
_DROPPED_PUNCT = {"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def caption_tokens(text: str) -> list[str]:
    """coco-caption's caption tokenization (Stanford PTBTokenizer, lower-cased, punctuation tokens dropped), in Python
    so scoring needs no Java: "A man's T-shirt (red) isn't $5." -> a man 's t-shirt -lrb- red -rrb- is n't $ 5.

    Checked against the real PTBTokenizer (CoreNLP 3.4.1, as pycocoevalcap 1.2 runs it) on the captions in
    tests/test_metrics_reference.py. Known differences, all rare in captions: CoreNLP's full abbreviation list is
    longer than ours; "y'all" stays one token (PTB: "y' all"); feet-inches "5'11" stays one token (PTB: "5 11")."""
    tokens: list[str] = []
    for raw in (t.lower() for t in _PTB_TOKEN.findall(text)):
        if raw in _SPLIT_WORDS:
            tokens += _SPLIT_WORDS[raw]
            continue
        clitics: list[str] = []
        while (clitic := _CLITIC.match(raw)) is not None:  # "i'd've" -> i 'd 've
            raw, tail = clitic.groups()
            clitics.insert(0, tail)
        if clitics:
            tokens += [raw, *clitics]
        elif raw.strip(".") and raw.strip("-"):  # runs of periods or hyphens are punctuation
            tokens.append(_BRACKETS.get(raw, raw))
    return [t for t in tokens if t not in _DROPPED_PUNCT]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9


def _bleu_aggregate(stats: np.ndarray) -> float:
    """Columns: hypothesis length, closest reference length, then (matches, guesses) for n = 1..4."""
    totals = stats.sum(axis=0)
    test_len, ref_len = totals[0], totals[1]
    log_precision = 0.0
    for k in range(4):
        correct, guess = totals[2 + 2 * k], totals[3 + 2 * k]
        log_precision += math.log((correct + _BLEU_TINY) / (guess + _BLEU_SMALL))
    bleu = math.exp(log_precision / 4)
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    if ratio < 1:
        bleu *= math.exp(1 - 1 / ratio)
    return float(bleu)


def bleu4(predictions: Sequence[str], references: Sequence[References]) -> Scores:
    """Corpus BLEU-4: clipped n-gram precisions summed over the corpus, geometric mean, brevity penalty against
    the closest reference length (coco-caption's default)."""
    rows = []
    for p, r in zip(predictions, references, strict=True):
        hyp = caption_tokens(p)
        refs = [caption_tokens(x) for x in _as_list(r)]
        max_ref_counts: Counter = Counter()
        for ref in refs:
            for gram, count in _ngrams(ref, 4).items():
                max_ref_counts[gram] = max(max_ref_counts[gram], count)
        closest = min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
        row = [len(hyp), closest]
        hyp_counts = _ngrams(hyp, 4)
        for k in range(1, 5):
            matches = sum(min(c, max_ref_counts[g]) for g, c in hyp_counts.items() if len(g) == k)
            row += [matches, max(len(hyp) - k + 1, 0)]
        rows.append(row)
    return Scores("bleu4", np.asarray(rows, dtype=float).reshape(-1, 10), _bleu_aggregate)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_one(prediction: str, references: References, beta: float = 1.2) -> float:
    """coco-caption ROUGE-L: best LCS precision and best LCS recall over the references, F-measure with beta 1.2."""
    hyp = caption_tokens(prediction)
    precisions, recalls = [], []
    for ref in map(caption_tokens, _as_list(references)):
        lcs = _lcs(ref, hyp)
        precisions.append(lcs / len(hyp) if hyp else 0.0)
        recalls.append(lcs / len(ref) if ref else 0.0)
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


def rouge_l(predictions: Sequence[str], references: Sequence[References]) -> Scores:
    return _mean_scores("rouge_l", [rouge_l_one(p, r) for p, r in zip(predictions, references, strict=True)])


def cider_d(predictions: Sequence[str], references: Sequence[References], sigma: float = 6.0) -> Scores:
    """CIDEr-D as in coco-caption's cider_scorer.py: tf-idf n-gram vectors (n = 1..4, document frequency over the
    references of this corpus), clipped cosine similarity, Gaussian length penalty (sigma 6), mean over the
    references and over n, times 10. The corpus figure is the mean of the per-sample scores.

    Kept from the reference code: the "length" in the penalty counts the 2-grams of a sentence (the original
    tests `n == 1` on a 0-based n), so published CIDEr-D values are reproduced."""
    hyps = [_ngrams(caption_tokens(p), 4) for p in predictions]
    refs = [[_ngrams(caption_tokens(x), 4) for x in _as_list(r)] for r in references]
    if len(hyps) != len(refs):
        raise ValueError("predictions and references differ in length")
    document_frequency: Counter = Counter()
    for ref_counts in refs:
        for gram in {g for counts in ref_counts for g in counts}:
            document_frequency[gram] += 1
    log_corpus = math.log(float(len(refs))) if refs else 0.0

    def vectorize(counts: Counter):
        vec: list[dict] = [defaultdict(float) for _ in range(4)]
        norm = [0.0] * 4
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            vec[n][gram] = float(tf) * (log_corpus - math.log(max(1.0, document_frequency[gram])))
            norm[n] += vec[n][gram] ** 2
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def similarity(hyp, ref) -> np.ndarray:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        delta = float(lh - lr)
        val = np.zeros(4)
        for n in range(4):
            for gram, weight in vh[n].items():
                val[n] += min(weight, vr[n][gram]) * vr[n][gram]
            if nh[n] != 0 and nr[n] != 0:
                val[n] /= nh[n] * nr[n]
            val[n] *= math.e ** (-(delta**2) / (2 * sigma**2))
        return val

    values = []
    for hyp_counts, ref_counts in zip(hyps, refs, strict=True):
        hyp = vectorize(hyp_counts)
        total = np.zeros(4)
        for counts in ref_counts:
            total += similarity(hyp, vectorize(counts))
        values.append(float(np.mean(total) / len(ref_counts) * 10.0))
    return _mean_scores("cider", values)


# ---------------------------------------------------------------------------------------------------------------
# Preference accuracy from implicit rewards (DPO)


def implicit_rewards(policy_logps: Sequence[float], reference_logps: Sequence[float], beta: float) -> np.ndarray:
    """DPO's implicit reward: beta * (log pi(y|x) - log pi_ref(y|x)), summed over the answer tokens."""
    return beta * (np.asarray(policy_logps, dtype=float) - np.asarray(reference_logps, dtype=float))


def preference_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> Scores:
    """Share of pairs whose chosen answer gets the higher implicit reward. A tie counts half (a coin flip), so the
    reference model itself, whose rewards are all zero, scores chance (0.5) rather than 0; TRL's training-time
    `rewards/accuracies` counts ties as wrong, which only matters at step 0."""
    chosen, rejected = np.asarray(chosen_rewards, dtype=float), np.asarray(rejected_rewards, dtype=float)
    return _mean_scores("preference_accuracy", (chosen > rejected) + 0.5 * (chosen == rejected))


def chosen_pick_rate(predictions: Sequence[str], chosen: Sequence[str]) -> Scores:
    """Share of greedy answers equal to the chosen answer (VQA-normalized exact match)."""
    values = [
        float(normalize_vqa_answer(p) == normalize_vqa_answer(c)) for p, c in zip(predictions, chosen, strict=True)
    ]
    return _mean_scores("chosen_pick_rate", values)


def reward_margin(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> Scores:
    chosen, rejected = np.asarray(chosen_rewards, dtype=float), np.asarray(rejected_rewards, dtype=float)
    return _mean_scores("reward_margin", chosen - rejected)


# ---------------------------------------------------------------------------------------------------------------
# Which metrics, by name

GENERATIVE_METRICS: dict[str, Callable[[Sequence[str], Sequence[References]], Scores]] = {
    "vqa_accuracy": vqa_accuracy,
    "relaxed_accuracy": relaxed_accuracy,
    "anls": anls,
    "cer": cer,
    "wer": wer,
    "bleu4": bleu4,
    "rouge_l": rouge_l,
    "cider": cider_d,
}
GENERATIVE_METRICS["chosen_pick_rate"] = chosen_pick_rate
# Computed from log-probabilities of the chosen and rejected answers, not from generated text.
PREFERENCE_METRICS = ("preference_accuracy", "reward_margin")
ALL_METRICS = [*GENERATIVE_METRICS, *PREFERENCE_METRICS]


def compute(name: str, predictions: Sequence[str], references: Sequence[References]) -> Scores:
    try:
        fn = GENERATIVE_METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(GENERATIVE_METRICS)}") from None
    return fn(predictions, references)


# ---------------------------------------------------------------------------------------------------------------
# Uncertainty and the paired comparison


@dataclass
class Interval:
    value: float
    low: float
    high: float
    level: float


def bootstrap_ci(scores: Scores, samples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap over samples (rows resampled with replacement, the metric re-aggregated each time)."""
    n = len(scores)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    rng = np.random.default_rng(seed)
    draws = np.array([scores.aggregate(scores.stats[rng.integers(0, n, n)]) for _ in range(samples)])
    alpha = (1 - level) / 2
    low, high = np.nanquantile(draws, [alpha, 1 - alpha])
    return Interval(scores.value, float(low), float(high), level)


@dataclass
class Comparison:
    """Tuned against base on the same samples. `delta` is tuned - base in the metric's own direction of sign
    (for an error rate a negative delta is an improvement); `better` reads that direction for you."""

    metric: str
    base: float
    tuned: float
    delta: float
    low: float
    high: float
    level: float
    p_value: float  # one-sided: probability, under resampling, that tuned is not better than base
    sign_test_p: float  # exact two-sided sign test on the samples where the two differ (McNemar for 0/1 scores)
    wins: int
    losses: int
    verdict: str  # "better", "worse" or "no significant difference"


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test, ties dropped; for 0/1 scores this is the exact McNemar test."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(
    base: Scores, tuned: Scores, samples: int = 1000, level: float = 0.95, seed: int = 0
) -> Comparison:
    """Paired bootstrap: the same resampled rows for base and tuned, so per-sample difficulty cancels out.
    The verdict is "better" when the whole interval of the improvement lies above zero."""
    if len(base) != len(tuned):
        raise ValueError(f"paired comparison needs the same samples: {len(base)} base vs {len(tuned)} tuned")
    n = len(base)
    sign = 1.0 if base.higher_is_better else -1.0
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        deltas.append(tuned.aggregate(tuned.stats[idx]) - base.aggregate(base.stats[idx]))
    deltas = np.array(deltas)
    alpha = (1 - level) / 2
    low, high = (float(x) for x in np.nanquantile(deltas, [alpha, 1 - alpha]))
    improvement = sign * deltas
    p_value = float(np.mean(improvement <= 0))
    per_base, per_tuned = np.array(base.per_sample()), np.array(tuned.per_sample())
    diff = sign * (per_tuned - per_base)
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    if sign * low > 0 and sign * high > 0:
        verdict = "better"
    elif sign * low < 0 and sign * high < 0:
        verdict = "worse"
    else:
        verdict = "no significant difference"
    return Comparison(
        metric=base.name,
        base=base.value,
        tuned=tuned.value,
        delta=tuned.value - base.value,
        low=low,
        high=high,
        level=level,
        p_value=p_value,
        sign_test_p=sign_test(wins, losses),
        wins=wins,
        losses=losses,
        verdict=verdict,
    )
