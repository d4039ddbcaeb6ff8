"""The report: three files, self-contained HTML with the table, the curves and the gallery."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from vlmflow_worker.evaluate import report


def _fixture(tmp_path: Path):
    (tmp_path / "images").mkdir()
    samples = []
    colours = ["red", "green", "blue", "yellow"]
    for i, colour in enumerate(colours):
        Image.new("RGB", (64, 64), colour).save(tmp_path / "images" / f"{i}.png")
        samples.append(
            {
                "id": f"s{i}",
                "question": "What colour is the shape?",
                "references": [colour],
                "images": [f"images/{i}.png"],
                "predictions": {"base": "red", "tuned": colour if i < 3 else "blue"},
                "scores": {
                    "base": {"vqa_accuracy": float(colour == "red")},
                    "tuned": {"vqa_accuracy": float(i < 3)},
                },
            }
        )
    summary = {
        "title": "shape colour <test>",
        "model": "tiny-idefics3",
        "dataset": "datasets/abc",
        "num_samples": 4,
        "generation": {"max_new_tokens": 8, "do_sample": False},
        "variants": ["base", "tuned"],
        "metrics": {
            "base": {"vqa_accuracy": {"value": 0.25, "low": 0.0, "high": 0.75}},
            "tuned": {"vqa_accuracy": {"value": 0.75, "low": 0.25, "high": 1.0}},
        },
        "comparisons": {
            "tuned": {
                "vqa_accuracy": {
                    "delta": 0.5, "low": 0.0, "high": 1.0, "p_value": 0.06, "verdict": "no significant difference",
                    "wins": 2, "losses": 0,
                }
            }
        },
    }  # fmt: skip
    curves = {"Training loss": {"tuned": [(1, 2.0), (2, 1.5), (3, 1.1)]}, "Eval accuracy": {"tuned": [(3, 0.7)]}}
    return summary, samples, curves


def test_report_files_and_html_content(tmp_path):
    summary, samples, curves = _fixture(tmp_path)
    paths = report.write_report(tmp_path / "out", summary, samples, curves, image_root=tmp_path)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["metrics"]["tuned"]["vqa_accuracy"]["value"] == 0.75
    lines = paths["predictions"].read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["s0", "s1", "s2", "s3"]

    page = paths["report"].read_text()
    assert "shape colour &lt;test&gt;" in page  # escaped
    assert page.count("data:image/png;base64,") == 4  # every image inline
    assert page.count("<svg") == 1 and "<polyline" in page  # the loss curve; the one eval point is a value
    assert "<b>Eval accuracy</b> · tuned: 0.700 at step 3" in page
    assert "+0.500" in page and "not significant" in page  # delta and verdict
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from outside
    # Samples where base and tuned differ come first in the gallery (s1, s2, s3 before s0).
    first_card = page.split('class="sample"')[1]
    assert "images/1.png" in first_card


def test_read_curves_from_a_job_event_log(tmp_path):
    log = tmp_path / "events.jsonl"
    events = [
        {"accepted": {}},
        {"progress": {"phase": "training", "step": "1", "loss": 2.5, "metrics": {"rewards/margins": 0.1}}},
        {"progress": {"phase": "training", "step": "2", "loss": 2.0}},
        {"eval": {"step": "2", "metrics": {"loss": 1.9}}},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events) + "{broken")
    curves = report.read_curves(log)
    assert curves["loss"] == [(1.0, 2.5), (2.0, 2.0)]
    assert curves["eval/loss"] == [(2.0, 1.9)]
    assert curves["rewards/margins"] == [(1.0, 0.1)]
    assert report.read_curves(tmp_path / "missing.jsonl") == {}

    trainer_log = tmp_path / "training_log.jsonl"
    lines = [
        {"step": 1, "epoch": 0.1, "loss": 0.69, "rewards/margins": 0.0, "learning_rate": 1e-3},
        {"step": 2, "epoch": 0.2, "loss": 0.6, "rewards/margins": 0.2},
        {"step": 2, "eval_loss": 0.65, "eval_rewards/accuracies": 0.75},
        {"step": 2, "train_runtime": 3.0, "train_loss": 0.64},
    ]
    trainer_log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    curves = report.read_curves(trainer_log)
    assert curves == {
        "loss": [(1.0, 0.69), (2.0, 0.6)],
        "rewards/margins": [(1.0, 0.0), (2.0, 0.2)],
        "eval/loss": [(2.0, 0.65)],
        "eval/rewards/accuracies": [(2.0, 0.75)],
    }


def test_charts_only_for_series_of_two_points_or_more():
    curves = {
        "Training loss": {"sft": [(1, 2.0), (2, 1.5), (3, 1.1)], "dpo": [(3, 0.9)]},
        "Eval loss": {"sft": [(30, 0.53)], "dpo": []},
        "DPO reward margin": {"dpo": []},
        "Eval accuracy": {"sft": [(5, float("nan")), (10, 0.8)]},
    }
    section = report._charts(curves)
    charts = re.findall(r"<svg .*?</svg>", section)
    # One chart, holding only the series that is a curve; the one-point series are printed as values.
    assert [re.search(r'aria-label="([^"]+)"', c)[1] for c in charts] == ["Training loss"]
    assert charts[0].count("<polyline") == 1 and ">sft<" in charts[0] and ">dpo<" not in charts[0]
    assert "<b>Training loss</b> · dpo: 0.900 at step 3" in section
    assert "<b>Eval loss</b> · sft: 0.530 at step 30" in section
    assert "<b>Eval accuracy</b> · sft: 0.800 at step 10" in section  # a NaN is no point
    assert "DPO reward margin" not in section  # empty: nothing at all
    assert report.svg_line_chart("Eval loss", curves["Eval loss"]) == ""
    assert report._charts({"Eval loss": {"sft": []}}) == ""  # no Training section without a figure


def test_nice_ticks_cover_the_range():
    ticks = report._nice_ticks(0.13, 0.92)
    assert ticks[0] <= 0.13 and ticks[-1] >= 0.92 and len(ticks) <= 7
    assert report._nice_ticks(1.0, 1.0)[0] < 1.0
