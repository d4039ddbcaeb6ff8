"""GRPO's verifiable rewards, as configuration: each reward scores one completion against the row's reference answers.

Kinds (`grpo.rewards[i].kind`), each 0..1 per completion:
- exact_match: 1 when the answer equals a reference, ignoring case and surrounding / repeated whitespace;
- vqa_accuracy: the official VQA accuracy (evaluate/metrics.py: normalization, min(#matches / 3, 1));
- relaxed_accuracy: ChartQA's relaxed accuracy (numbers within 5 % of the target, else exact match);
- anls: DocVQA's ANLS (1 - normalized edit distance, 0 from 0.5 on);
- numeric: 1 when the first number in the answer is within `absolute_tolerance` or `relative_tolerance` x |target|
  of a reference that is a number ("1,234" and "12%" parse; tolerances 0: equal as numbers, so "2.0" is 2);
- format: 1 when the completion holds exactly one `<tag>...</tag>` with a non-blank answer inside (text around it,
  such as reasoning, is allowed);
- custom: a function from a Python file under the worker's data roots. It runs the user's code in the training
  process, so the worker refuses it unless its operator turned `allow_user_rewards` on (VLMFLOW_ALLOW_USER_REWARDS).

With `tag` set, an accuracy reward reads the answer from the last `<tag>...</tag>` of the completion (no tag: 0).
The reward a completion gets is the weighted sum of the kinds' scores (TRL's `reward_weights`); `RewardSet.score`
computes the same sum, so a test or a report can reproduce what training optimized.

A custom function is called as `fn(completions, references, **columns) -> list[float]`: the completions as plain
text, each row's reference answers as a list of strings, and the row's other columns (`id`, `prompt`); it must
return one number (or None: not scorable) per completion.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound
from vlmflow_worker.evaluate.metrics import anls_one, relaxed_correct, vqa_accuracy_one
from vlmflow_worker.serve.settings import WorkerSettings
from vlmflow_worker.storage import resolve_uri

KINDS = ("exact_match", "vqa_accuracy", "relaxed_accuracy", "anls", "numeric", "format", "custom")
ACCURACY_KINDS = ("exact_match", "vqa_accuracy", "relaxed_accuracy", "anls", "numeric")
TAG = re.compile(r"^[A-Za-z][\w-]*$")
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|[-+]?\.\d+%?")


@dataclass(frozen=True)
class RewardSpec:
    """One reward of a GRPO run, as the request names it (`grpo.rewards[i]`)."""

    kind: str
    weight: float = 1.0
    name: str = ""
    tag: str = ""
    relative_tolerance: float = 0.0
    absolute_tolerance: float = 0.0
    file: str = ""
    function: str = ""

    @property
    def label(self) -> str:
        """The reward's name in progress events and logs (`rewards/<label>/mean`)."""
        return self.name or (self.function if self.kind == "custom" else self.kind)

    def check(self, where: str) -> None:
        """Raises InvalidArgument naming the field (`where` is e.g. "grpo.rewards[1]")."""
        if self.kind not in KINDS:
            raise InvalidArgument(f"{where}.kind {self.kind!r}: choose from {', '.join(KINDS)}")
        if not math.isfinite(self.weight):
            raise InvalidArgument(f"{where}.weight must be a finite number, got {self.weight}")
        if self.tag and not TAG.match(self.tag):
            raise InvalidArgument(f"{where}.tag {self.tag!r}: use a tag name such as 'answer' (letters, digits, _, -)")
        if self.kind == "format" and not self.tag:
            raise InvalidArgument(f"{where}.tag is empty: the format reward checks for <tag>...</tag>; name the tag")
        if self.relative_tolerance < 0 or self.absolute_tolerance < 0:
            raise InvalidArgument(f"{where}.relative_tolerance and absolute_tolerance must be >= 0")
        if (self.relative_tolerance or self.absolute_tolerance) and self.kind != "numeric":
            raise InvalidArgument(f"{where}: tolerances apply to the numeric reward only, not {self.kind}")
        if self.kind == "custom" and not (self.file and self.function):
            raise InvalidArgument(f"{where}: a custom reward needs file (a .py under the data roots) and function")
        if self.kind != "custom" and (self.file or self.function):
            raise InvalidArgument(f"{where}: file and function belong to kind 'custom', not {self.kind}")
        if self.name and not TAG.match(self.name):
            raise InvalidArgument(f"{where}.name {self.name!r}: use letters, digits, _ or -")


# ---------------------------------------------------------------------------------------------------------------
# Scores of one answer


def _collapse(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(answer: str, references: Sequence[str]) -> float:
    return float(any(_collapse(answer) == _collapse(r) for r in references))


def parse_number(text: str) -> float | None:
    """The first number in `text`: "about 1,234.5 units" -> 1234.5, "12%" -> 12.0 (the percent as written)."""
    match = NUMBER.search(text)
    if match is None:
        return None
    return float(match.group(0).replace(",", "").rstrip("%"))


def numeric(answer: str, references: Sequence[str], relative: float = 0.0, absolute: float = 0.0) -> float:
    value = parse_number(answer)
    if value is None:
        return 0.0
    for reference in references:
        target = parse_number(reference)
        if target is not None and abs(value - target) <= max(absolute, relative * abs(target)):
            return 1.0
    return 0.0


def tagged(completion: str, tag: str) -> str | None:
    """The text inside the last <tag>...</tag>, stripped; None without one."""
    found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", completion, flags=re.DOTALL)
    return found[-1].strip() if found else None


def format_ok(completion: str, tag: str) -> float:
    """1 for exactly one <tag>...</tag> pair with a non-blank answer inside, else 0."""
    opens, closes = completion.count(f"<{tag}>"), completion.count(f"</{tag}>")
    inside = tagged(completion, tag)
    return float(opens == 1 and closes == 1 and bool(inside))


def score_one(spec: RewardSpec, completion: str, references: Sequence[str]) -> float:
    """One built-in reward of one completion (custom rewards score batches: `RewardFunction`)."""
    if spec.kind == "format":
        return format_ok(completion, spec.tag)
    answer = tagged(completion, spec.tag) if spec.tag else completion.strip()
    if answer is None or not references:
        return 0.0
    if spec.kind == "exact_match":
        return exact_match(answer, references)
    if spec.kind == "vqa_accuracy":
        return vqa_accuracy_one(answer, list(references))
    if spec.kind == "relaxed_accuracy":
        return float(any(relaxed_correct(answer, r) for r in references))
    if spec.kind == "anls":
        return anls_one(answer, list(references))
    if spec.kind == "numeric":
        return numeric(answer, references, spec.relative_tolerance, spec.absolute_tolerance)
    raise InvalidArgument(f"reward kind {spec.kind!r} is not built in")


# ---------------------------------------------------------------------------------------------------------------
# Reward functions as TRL calls them


def completion_text(completion: Any) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": ...}]; plain ones as text."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "".join(parts)


class RewardFunction:
    """One reward as TRL's GRPOTrainer calls it: `(prompts, completions, references=..., **columns) -> [float]`.
    Its `__name__` is the reward's label, which TRL logs as `rewards/<label>/mean` and `/std`."""

    def __init__(self, spec: RewardSpec, user_fn: Callable[..., Any] | None = None) -> None:
        self.spec = spec
        self.user_fn = user_fn
        self.__name__ = spec.label

    def __call__(self, prompts=None, completions=(), references=(), **columns) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        refs = [list(r) if not isinstance(r, str) else [r] for r in references] or [[] for _ in texts]
        if self.user_fn is None:
            return [score_one(self.spec, t, r) for t, r in zip(texts, refs, strict=True)]
        user_columns = {k: v for k, v in columns.items() if k in ("id", "prompt")}
        return self._call_user(texts, refs, user_columns)

    def _call_user(self, texts: list[str], refs: list[list[str]], columns: dict[str, Any]) -> list[float | None]:
        where = f"custom reward {self.spec.function!r} from {self.spec.file}"
        try:
            values = self.user_fn(texts, refs, **columns)  # type: ignore[misc]
        except Exception as err:
            raise InvalidArgument(
                f"{where} raised {type(err).__name__}: {err}; fix the function (it runs in the training process)",
                detail=traceback.format_exc()[-4000:],
            ) from err
        return check_values(values, len(texts), where)


def check_values(values: Any, expected: int, where: str) -> list[float | None]:
    """A user reward's return value as TRL needs it (one finite number or None per completion), or InvalidArgument
    saying what it returned instead."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidArgument(f"{where} returned {type(values).__name__}; return a list of {expected} numbers")
    if len(values) != expected:
        raise InvalidArgument(f"{where} returned {len(values)} values for {expected} completions; return one each")
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"{where} returned {value!r} at position {i}; return finite numbers (or None)")
        out.append(float(value))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The configured set


class RewardSet:
    """The rewards of one run: the functions TRL calls, their weights, and the weighted sum (`score`)."""

    def __init__(self, specs: Sequence[RewardSpec], user_fns: dict[int, Callable[..., Any]] | None = None) -> None:
        if not specs:
            raise InvalidArgument("grpo.rewards is empty: name at least one reward (e.g. kind vqa_accuracy)")
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise InvalidArgument(f"grpo.rewards: two rewards share a name ({', '.join(labels)}); set name on one")
        self.specs = list(specs)
        self.functions = [RewardFunction(s, (user_fns or {}).get(i)) for i, s in enumerate(specs)]
        self.weights = [s.weight for s in specs]

    def score(self, completions: Sequence[Any], references: Sequence[Sequence[str]]) -> dict[str, list[float]]:
        """{label: per-completion scores, ..., "reward": the weighted sum}. A None (not scorable) counts 0 in the
        sum, as TRL's nansum does."""
        out: dict[str, list[float]] = {}
        total = [0.0] * len(completions)
        for fn, weight in zip(self.functions, self.weights, strict=True):
            values = fn(completions=completions, references=references)
            out[fn.__name__] = [math.nan if v is None else float(v) for v in values]
            total = [t + (0.0 if v is None else weight * float(v)) for t, v in zip(total, values, strict=True)]
        out["reward"] = total
        return out


def check_specs(specs: Sequence[RewardSpec], settings: WorkerSettings) -> None:
    """Everything about the rewards that can be checked without running user code (in the server, before the job):
    kinds and fields, and for custom rewards the worker's permission, the file under the roots, and a top-level
    function of that name in it (found by parsing, never by importing)."""
    for i, spec in enumerate(specs):
        where = f"grpo.rewards[{i}]"
        spec.check(where)
        if spec.kind == "custom":
            custom_path(spec, settings, where)


def custom_path(spec: RewardSpec, settings: WorkerSettings, where: str) -> Path:
    if not settings.allow_user_rewards:
        raise FailedPrecondition(
            f"{where} is a custom reward (kind 'custom', {spec.file}), which runs user code in the training process; "
            "this worker does not allow it. Its operator can turn it on with VLMFLOW_ALLOW_USER_REWARDS=1 "
            "(--allow-user-rewards); or use a built-in kind"
        )
    path = resolve_uri(spec.file, settings, f"{where}.file")
    if path.suffix != ".py" or not path.is_file():
        raise NotFound(f"{where}.file {spec.file!r} is not a Python file ({path})")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise InvalidArgument(f"{where}.file {spec.file!r} is not valid Python: line {err.lineno}: {err.msg}") from err
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if spec.function not in defined:
        names = ", ".join(sorted(defined)) or "none"
        raise InvalidArgument(
            f"{where}.function {spec.function!r} is not defined at the top level of {spec.file} (functions: {names})"
        )
    return path


def load_user_functions(specs: Sequence[RewardSpec], settings: WorkerSettings) -> dict[int, Callable[..., Any]]:
    """Imports each custom reward's file (running its top-level code) and returns {index: function}; in the job
    process only."""
    loaded: dict[int, Callable[..., Any]] = {}
    for i, spec in enumerate(specs):
        if spec.kind != "custom":
            continue
        where = f"grpo.rewards[{i}]"
        path = custom_path(spec, settings, where)
        module_spec = importlib.util.spec_from_file_location(f"vlmflow_user_reward_{i}", path)
        if module_spec is None or module_spec.loader is None:
            raise InvalidArgument(f"{where}.file {spec.file!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise InvalidArgument(
                f"{where}.file {spec.file!r} failed to import: {type(err).__name__}: {err}",
                detail=traceback.format_exc()[-4000:],
            ) from err
        fn = getattr(module, spec.function, None)
        if not callable(fn):
            raise InvalidArgument(f"{where}.function {spec.function!r} in {spec.file} is not a function")
        loaded[i] = fn
    return loaded
