"""Synthetic tasks: deterministic by seed, answers from the task's vocabulary, preference rows pair right/wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmflow_worker.fixtures.synthetic import COLOURS, NUMBERS, TASKS, WORDS, generate


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_task_rows_and_seed_give_identical_files(task: str, tmp_path: Path) -> None:
    generate(task, 12, 5, tmp_path / "a")
    generate(task, 12, 5, tmp_path / "b")
    generate(task, 12, 6, tmp_path / "c")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")
    rows = [json.loads(line) for line in (tmp_path / "a" / "data.jsonl").open()]
    answers = {row["messages"][1]["content"][0]["text"] for row in rows}
    allowed = {
        "shape_colour": set(COLOURS),
        "count_dots": set(NUMBERS),
        "rendered_word": set(WORDS),
        "bar_value": {str(v) for v in range(1, 10)},
    }[task]
    assert answers <= allowed and len(answers) > 1


def test_preference_rows_pair_the_right_answer_with_a_wrong_one(tmp_path: Path) -> None:
    generate("count_dots", 20, 0, tmp_path, preference=True)
    for line in (tmp_path / "data.jsonl").open():
        row = json.loads(line)
        chosen, rejected = (row[k][0]["content"][0]["text"] for k in ("chosen", "rejected"))
        assert chosen in NUMBERS and rejected in NUMBERS and chosen != rejected
        assert row["prompt"][0]["content"][0] == {"type": "image"} and (tmp_path / row["images"][0]).is_file()
