"""GRPO's rewards against hand-computed values, their weighted sum, and the custom reward's refusals and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, PathOutsideRoots
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.train import rewards as R


def score(kind: str, completion: str, references: list[str], **fields) -> float:
    return R.score_one(R.RewardSpec(kind, **fields), completion, references)


def test_exact_match_ignores_case_and_whitespace_only():
    assert score("exact_match", "  Red \n", ["red"]) == 1.0
    assert score("exact_match", "dark   red", ["Dark red"]) == 1.0
    assert score("exact_match", "red circle", ["red"]) == 0.0
    assert score("exact_match", "Blue", ["red", "blue"]) == 1.0  # any reference


def test_vqa_accuracy_is_the_official_one():
    assert score("vqa_accuracy", "Two.", ["2"]) == 1.0  # number words, punctuation
    # 3 of 10 annotators say 2: each leave-one-out subset without a matching one keeps 3 matches (1.0), the 3 subsets
    # without a matching one keep 2 (2/3): (7 * 1 + 3 * 2/3) / 10 = 0.9.
    assert score("vqa_accuracy", "2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert score("vqa_accuracy", "a cat", ["dog"]) == 0.0


def test_relaxed_accuracy_is_chartqas():
    assert score("relaxed_accuracy", "41", ["42"]) == 1.0  # |41 - 42| / 42 = 2.4 % <= 5 %
    assert score("relaxed_accuracy", "39", ["42"]) == 0.0  # 7.1 %
    assert score("relaxed_accuracy", "12%", ["0.12"]) == 1.0  # a percent is its fraction
    assert score("relaxed_accuracy", "Yes", ["yes"]) == 1.0
    assert score("relaxed_accuracy", "0.1", ["0"]) == 0.0  # a target of 0 has no relative tolerance


def test_anls_is_docvqas():
    assert score("anls", "helo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5 characters
    assert score("anls", "abc", ["xyz"]) == 0.0  # NL 1 >= 0.5
    assert score("anls", "Hello  World", ["hello world", "x"]) == 1.0


def test_numeric_tolerance():
    assert score("numeric", "2.0", ["2"]) == 1.0  # equal as numbers
    assert score("numeric", "about 1,234.5 units", ["1234"]) == 0.0  # tolerance 0
    assert score("numeric", "about 1,234.5 units", ["1234"], relative_tolerance=0.001) == 1.0  # 0.5 <= 1.234
    assert score("numeric", "3.4", ["3"], absolute_tolerance=0.5) == 1.0
    assert score("numeric", "3.6", ["3"], absolute_tolerance=0.5) == 0.0
    assert score("numeric", "-7", ["-7"]) == 1.0
    assert score("numeric", "no idea", ["3"]) == 0.0
    assert score("numeric", "3", ["three"]) == 0.0  # a reference that is not a number matches nothing
    assert R.parse_number("12% of 40") == 12.0


def test_format_and_tagged_answers():
    assert score("format", "<answer>red</answer>", [], tag="answer") == 1.0
    assert score("format", "The shape is red. <answer>red</answer>", [], tag="answer") == 1.0
    assert score("format", "<answer> </answer>", [], tag="answer") == 0.0
    assert score("format", "<answer>red</answer><answer>blue</answer>", [], tag="answer") == 0.0
    assert score("format", "red", [], tag="answer") == 0.0
    # An accuracy reward with a tag reads the answer inside it; no tag, no answer.
    assert score("exact_match", "I see <answer>Red</answer>", ["red"], tag="answer") == 1.0
    assert score("exact_match", "red", ["red"], tag="answer") == 0.0
    assert score("numeric", "<n>41</n>", ["42"], tag="n", relative_tolerance=0.05) == 1.0


def test_weighted_sum_as_trl_is_given_it():
    rewards = R.RewardSet(
        [
            R.RewardSpec("vqa_accuracy", weight=1.0, tag="answer"),
            R.RewardSpec("format", weight=0.5, tag="answer"),
            R.RewardSpec("numeric", weight=2.0, name="close", absolute_tolerance=1),
        ]
    )
    # TRL hands conversational completions: a list of assistant messages each.
    completions = [
        [{"role": "assistant", "content": "<answer>2</answer>"}],
        [{"role": "assistant", "content": "2"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "<answer>3</answer>"}]}],
    ]
    scores = rewards.score(completions, [["2"], ["2"], ["2"]])
    assert scores["vqa_accuracy"] == [1.0, 0.0, 0.0]
    assert scores["format"] == [1.0, 0.0, 1.0]
    assert scores["close"] == [1.0, 1.0, 1.0]  # |3 - 2| <= 1
    # 1 * vqa + 0.5 * format + 2 * close
    assert scores["reward"] == [3.5, 2.0, 2.5]
    assert [f.__name__ for f in rewards.functions] == ["vqa_accuracy", "format", "close"]
    assert rewards.weights == [1.0, 0.5, 2.0]


def test_bad_reward_fields_name_the_field():
    with pytest.raises(InvalidArgument, match=r"grpo.rewards\[0\].kind 'bleu'"):
        R.RewardSpec("bleu").check("grpo.rewards[0]")
    with pytest.raises(InvalidArgument, match=r"grpo.rewards\[1\].tag is empty"):
        R.RewardSpec("format").check("grpo.rewards[1]")
    with pytest.raises(InvalidArgument, match="numeric reward only"):
        R.RewardSpec("exact_match", relative_tolerance=0.1).check("r")
    with pytest.raises(InvalidArgument, match="needs file"):
        R.RewardSpec("custom", file="x.py").check("r")
    with pytest.raises(InvalidArgument, match="share a name"):
        R.RewardSet([R.RewardSpec("anls"), R.RewardSpec("anls")])
    with pytest.raises(InvalidArgument, match="grpo.rewards is empty"):
        R.RewardSet([])


USER_REWARDS = """
CALLS = []

def length_reward(completions, references, **columns):
    CALLS.append(sorted(columns))
    return [float(len(c)) for c in completions]

def broken(completions, references, **columns):
    return 1 / 0

def too_few(completions, references, **columns):
    return [1.0]

def not_a_list(completions, references, **columns):
    return "1.0"

def not_finite(completions, references, **columns):
    return [float("nan")] * len(completions)

answer = 42
"""


def user_settings(tmp_path: Path, allow: bool = True) -> WorkerSettings:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "my_rewards.py").write_text(USER_REWARDS)
    return WorkerSettings(
        port=0, artifact_root=tmp_path / "artifacts", data_roots=[tmp_path / "data"], allow_user_rewards=allow
    )


def custom(function: str, file: str = "") -> R.RewardSpec:
    return R.RewardSpec("custom", file=file, function=function)


def test_a_custom_reward_runs_the_users_function(tmp_path):
    settings = user_settings(tmp_path)
    spec = custom("length_reward", str(tmp_path / "data" / "my_rewards.py"))
    R.check_specs([spec], settings)
    rewards = R.RewardSet([spec, R.RewardSpec("exact_match")], R.load_user_functions([spec], settings))
    out = rewards.functions[0](
        prompts=[[]] * 2, completions=["abc", "de"], references=[["x"], ["y"]], id=["a", "b"], trainer_state=None
    )
    assert out == [3.0, 2.0]
    assert rewards.functions[0].__name__ == "length_reward"
    assert rewards.score(["abc", "x"], [["x"], ["x"]])["reward"] == [3.0, 2.0]  # 3 + 0, 1 + 1


def test_custom_rewards_are_off_unless_the_worker_allows_them(tmp_path):
    settings = user_settings(tmp_path, allow=False)
    spec = custom("length_reward", str(tmp_path / "data" / "my_rewards.py"))
    with pytest.raises(FailedPrecondition, match="VLMFLOW_ALLOW_USER_REWARDS"):
        R.check_specs([spec], settings)
    with pytest.raises(FailedPrecondition, match="runs user code"):
        R.load_user_functions([spec], settings)


def test_custom_reward_file_and_function_are_checked_without_running_them(tmp_path):
    settings = user_settings(tmp_path)
    with pytest.raises(NotFound, match=r"grpo.rewards\[0\].file .*missing.py"):
        R.check_specs([custom("f", str(tmp_path / "data" / "missing.py"))], settings)
    with pytest.raises(InvalidArgument, match=r"function 'nope' is not defined .*length_reward"):
        R.check_specs([custom("nope", str(tmp_path / "data" / "my_rewards.py"))], settings)
    (tmp_path / "outside.py").write_text("def f(c, r): return [0.0] * len(c)\n")
    with pytest.raises(PathOutsideRoots, match=r"grpo.rewards\[0\].file"):
        R.check_specs([custom("f", str(tmp_path / "outside.py"))], settings)
    (tmp_path / "data" / "bad.py").write_text("def f(:\n")
    with pytest.raises(InvalidArgument, match="not valid Python: line 1"):
        R.check_specs([custom("f", str(tmp_path / "data" / "bad.py"))], settings)
    with pytest.raises(InvalidArgument, match="'answer' in .* is not a function"):
        R.load_user_functions([custom("answer", str(tmp_path / "data" / "my_rewards.py"))], settings)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("broken", "raised ZeroDivisionError: division by zero"),
        ("too_few", "returned 1 values for 2 completions"),
        ("not_a_list", "returned str; return a list of 2 numbers"),
        ("not_finite", "returned nan at position 0"),
    ],
)
def test_a_custom_reward_that_fails_says_how(tmp_path, function, message):
    settings = user_settings(tmp_path)
    spec = custom(function, str(tmp_path / "data" / "my_rewards.py"))
    fn = R.RewardSet([spec], R.load_user_functions([spec], settings)).functions[0]
    with pytest.raises(InvalidArgument, match=message) as info:
        fn(prompts=[[]] * 2, completions=["a", "b"], references=[["a"], ["b"]])
    assert f"custom reward {function!r}" in info.value.message
