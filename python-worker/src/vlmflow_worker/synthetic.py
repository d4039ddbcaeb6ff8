"""Deterministic synthetic vision tasks the tiny model can learn on CPU: for tests, benchmarks and the offline demo.

python -m vlmflow_worker.synthetic --task shape_colour --rows 200 --seed 0 --out .state/data/shape_colour
python -m vlmflow_worker.synthetic --task count_dots --rows 200 --preference --out .state/data/dots_pref

Writes `data.jsonl` (TRL's conversational layout: `messages` with typed content parts and an `images` list, or
with --preference: `prompt`, `chosen`, `rejected`, `images`) and `images/*.png` beside it. Same task, rows and
seed give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 64
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("one", "two", "three", "four", "five")
WORDS = ("cat", "dog", "sky", "tree", "car", "ball", "red", "blue", "house", "food")
BARS = ("A", "B", "C")

# A task draws one image and returns (image, question, right answer, the answers a wrong model might give).
Task = Callable[[random.Random], tuple[Image.Image, str, str, list[str]]]


def shape_colour(rng: random.Random) -> tuple[Image.Image, str, str, list[str]]:
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    r = rng.randint(12, 24)
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return image, "What colour is the shape?", colour, [c for c in COLOURS if c != colour]


def count_dots(rng: random.Random) -> tuple[Image.Image, str, str, list[str]]:
    n = rng.randint(1, len(NUMBERS))
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    cells = rng.sample([(x, y) for x in range(4) for y in range(4)], n)  # a 4x4 grid keeps dots apart
    for x, y in cells:
        cx, cy = 8 + x * 16, 8 + y * 16
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill="black")
    answer = NUMBERS[n - 1]
    return image, "How many dots are there?", answer, [w for w in NUMBERS if w != answer]


def rendered_word(rng: random.Random) -> tuple[Image.Image, str, str, list[str]]:
    word = rng.choice(WORDS)
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    draw.text((rng.randint(2, 10), rng.randint(10, 40)), word, fill="black", font=font)
    return image, "What word is written in the image?", word, [w for w in WORDS if w != word]


def bar_value(rng: random.Random) -> tuple[Image.Image, str, str, list[str]]:
    values = [rng.randint(1, 9) for _ in BARS]
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    for i, value in enumerate(values):
        x = 8 + i * 18
        draw.rectangle((x, SIZE - 4 - value * 6, x + 12, SIZE - 4), fill=(30, 60, 220))
    asked = rng.randrange(len(BARS))
    answer = str(values[asked])
    question = f"What is the value of bar {BARS[asked]}? The bars are {', '.join(BARS)} from left to right."
    return image, question, answer, [str(v) for v in range(1, 10) if str(v) != answer]


TASKS: dict[str, Task] = {
    "shape_colour": shape_colour,
    "count_dots": count_dots,
    "rendered_word": rendered_word,
    "bar_value": bar_value,
}


def generate(task: str, rows: int, seed: int, out: Path, preference: bool = False) -> Path:
    """Writes `rows` rows of `task` into `out`; returns the path of data.jsonl."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    rng = random.Random(f"{task}:{seed}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    lines = []
    for i in range(rows):
        image, question, answer, wrong = TASKS[task](rng)
        name = f"images/{task}-{i:05d}.png"
        image.save(out / name, optimize=False)
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        if preference:
            row = {
                "prompt": [user],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rng.choice(wrong)}]}],
                "images": [name],
            }
        else:
            assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
            row = {"messages": [user, assistant], "images": [name]}
        lines.append(json.dumps(row))
    path = out / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preference", action="store_true", help="chosen = the right answer, rejected = a wrong one")
    args = parser.parse_args(argv)
    print(generate(args.task, args.rows, args.seed, args.out, args.preference))


if __name__ == "__main__":
    main()
