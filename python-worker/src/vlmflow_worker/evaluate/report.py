"""The evaluation report: `metrics.json`, `predictions.jsonl` and one self-contained `report.html`.

The HTML needs nothing beside it: styles inline, curves as inline SVG, gallery images as base64 thumbnails. It
reads top to bottom: what was compared, the metric table (base, each tuned variant, the delta with its interval
and the verdict of the paired comparison), training and eval curves, then samples where the answers differ first.

Inputs are plain data (see `write_report`), so the report can be rebuilt from the JSON files alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

METRIC_LABELS = {
    "vqa_accuracy": "VQA accuracy",
    "relaxed_accuracy": "Relaxed accuracy (ChartQA)",
    "anls": "ANLS",
    "cer": "Character error rate",
    "wer": "Word error rate",
    "bleu4": "BLEU-4",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr-D",
    "preference_accuracy": "Preference accuracy",
    "reward_margin": "Reward margin",
    "chosen_pick_rate": "Picks the chosen answer",
}
LOWER_IS_BETTER = {"cer", "wer"}
PAIR_METRICS = {"preference_accuracy", "reward_margin"}
PALETTE = ["#64748b", "#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed"]
GALLERY_LIMIT = 48
THUMBNAIL = 224

Curve = list[tuple[float, float]]


# ---------------------------------------------------------------------------------------------------------------
# Files


def write_report(
    folder: Path,
    summary: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    curves: dict[str, dict[str, Curve]] | None = None,
    image_root: Path | None = None,
) -> dict[str, Path]:
    """Writes the three outputs into `folder` (each through a temporary file and a rename) and returns their paths.

    summary: {"title", "model", "dataset", "num_samples", "generation", "variants": [names, base first],
              "metrics": {variant: {metric: {"value", "low", "high"}}},
              "comparisons": {variant: {metric: {"delta", "low", "high", "p_value", "verdict", ...}}}}
    samples: [{"id", "question", "references": [...], "images": [relative paths], "predictions": {variant: text},
               "scores": {variant: {metric: value}}}]
    curves:  {chart title: {series name: [(step, value), ...]}}
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": folder / "metrics.json",
        "predictions": folder / "predictions.jsonl",
        "report": folder / "report.html",
    }
    _write_atomic(paths["metrics"], json.dumps({**summary, "curves": curves or {}}, indent=2, default=_json_default))
    _write_atomic(paths["predictions"], "".join(json.dumps(s, default=_json_default) + "\n" for s in samples))
    _write_atomic(paths["report"], render_html(summary, samples, curves or {}, image_root))
    return paths


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# Trainer log figures kept as curves besides the loss: DPO's rewards/*, GRPO's reward, reward_std, rewards/<name>/*,
# kl and completion lengths.
TRAINER_FIGURES = ("rewards/", "reward", "kl", "completions/mean_length")


def read_curves(log_path: Path) -> dict[str, Curve]:
    """Curves from a training log: a job's event log (JobEvent in protobuf JSON) or a trainer's training_log.jsonl.

    Returns {"loss": [...], "eval/<metric>": [...], "<progress metric>": [...]} with steps on x."""
    curves: dict[str, Curve] = {}
    if not log_path.is_file():
        return curves
    for line in log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "progress" in event:
            progress = event["progress"]
            step = float(progress.get("step", 0))
            if "loss" in progress and progress.get("phase", "training") in ("training", "train"):
                curves.setdefault("loss", []).append((step, float(progress["loss"])))
            for name, value in (progress.get("metrics") or {}).items():
                curves.setdefault(name, []).append((step, float(value)))
        elif "eval" in event:
            step = float(event["eval"].get("step", 0))
            for name, value in (event["eval"].get("metrics") or {}).items():
                curves.setdefault(f"eval/{name}", []).append((step, float(value)))
        elif "step" in event and "train_runtime" not in event:
            # A trainer's own log line (training_log.jsonl): {"step", "loss", "rewards/margins", "eval_loss", ...}.
            step = float(event["step"])
            for name, value in event.items():
                if not isinstance(value, int | float) or name in ("step", "epoch"):
                    continue
                if name.startswith("eval_"):
                    name = "eval/" + name.removeprefix("eval_")
                elif name != "loss" and not name.startswith(TRAINER_FIGURES):
                    continue
                curves.setdefault(name, []).append((step, float(value)))
    return curves


# ---------------------------------------------------------------------------------------------------------------
# Formatting helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric == "cider" or abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _signed(value: float, metric: str = "") -> str:
    text = _fmt(value, metric)
    return text if text.startswith("-") or text == "–" else f"+{text}"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _thumbnail(path: Path) -> str | None:
    """A base64 data URI of the image, longest edge THUMBNAIL px (small images scaled up with nearest
    neighbour so synthetic 64 px tiles stay crisp)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = THUMBNAIL / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            image = image.resize(size, resample)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------------------------------------------------
# SVG charts


def svg_line_chart(title: str, series: dict[str, Curve], width: int = 460, height: int = 240) -> str:
    """A small line chart: one polyline per series, nice y ticks, a legend; no JavaScript.

    Only series with at least two finite points are drawn (one point is a value, not a curve; `_charts` prints it);
    "" when none has."""
    series = {name: points for name, points in _curve_series(series).items() if len(points) >= 2}
    if not series:
        return ""
    left, right, top, bottom = 52, 14, 30, 34
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    ticks = _nice_ticks(y0, y1)
    y0, y1 = ticks[0], ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="18" class="chart-title">{_esc(title)}</text>',
    ]
    for tick in ticks:
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_tick(tick)}</text>')
    for x in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 4}" class="tick" text-anchor="end">step</text>')
    for i, (name, points) in enumerate(series.items()):
        colour = PALETTE[(i + 1) % len(PALETTE)] if len(series) > 1 else PALETTE[1]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2" '
                     'stroke-linejoin="round" stroke-linecap="round"/>')  # fmt: skip
        if len(points) <= 30:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
        lx = width - right - 130 * (len(series) - i)  # legend on the title row, right-aligned
        ly = 18
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{ly - 3}" class="legend">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curve_series(series: dict[str, Curve]) -> dict[str, Curve]:
    """Each series' finite points in step order (a NaN loss is a gap, not a point)."""
    return {name: sorted((x, y) for x, y in points if math.isfinite(y)) for name, points in series.items()}


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return ticks


def _tick(value: float) -> str:
    return f"{value:.3g}" if value else "0"


# ---------------------------------------------------------------------------------------------------------------
# HTML


def render_html(
    summary: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    curves: dict[str, dict[str, Curve]],
    image_root: Path | None = None,
) -> str:
    variants: list[str] = summary["variants"]
    base = variants[0]
    tuned = variants[1:]
    metric_names = list(next(iter(summary["metrics"].values()), {}).keys())
    sections = [
        _header(summary, variants),
        _cards(summary, base, tuned, metric_names),
        _table(summary, variants, metric_names),
        _charts(curves),
        _gallery(samples, variants, metric_names, image_root),
    ]
    title = summary.get("title") or "Evaluation report"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(s for s in sections if s)
        + '<footer>Made by vlmflow. Intervals: percentile bootstrap over samples; "better" means the paired '
        "bootstrap interval of the improvement excludes zero. Sign test: exact, on samples whose scores differ."
        "</footer></main></body></html>"
    )


def _header(summary: dict[str, Any], variants: list[str]) -> str:
    facts = [
        ("Model", summary.get("model", "")),
        ("Dataset", summary.get("dataset", "")),
        ("Samples", summary.get("num_samples", "")),
        ("Variants", ", ".join(variants)),
    ]
    generation = summary.get("generation") or {}
    if generation:
        facts.append(("Generation", ", ".join(f"{k}={v}" for k, v in generation.items())))
    if summary.get("created"):
        facts.append(("Created", summary["created"]))
    items = "".join(f"<div><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>" for k, v in facts if v != "")
    title = summary.get("title") or "Evaluation report"
    return f'<header><p class="eyebrow">vlmflow · evaluation</p><h1>{_esc(title)}</h1><dl>{items}</dl></header>'


def _verdict_badge(verdict: str) -> str:
    css = {"better": "good", "worse": "bad"}.get(verdict, "neutral")
    text = {"better": "better", "worse": "worse"}.get(verdict, "not significant")
    return f'<span class="badge {css}">{text}</span>'


def _cards(summary: dict[str, Any], base: str, tuned: list[str], metric_names: list[str]) -> str:
    if not tuned or not metric_names:
        return ""
    cards = []
    for variant in tuned:
        for metric in metric_names[:3]:
            cmp = summary.get("comparisons", {}).get(variant, {}).get(metric)
            before = summary["metrics"][base][metric]["value"]
            after = summary["metrics"][variant][metric]["value"]
            tone = {"better": " good", "worse": " bad"}.get(cmp["verdict"], "") if cmp else ""
            delta = f'<span class="delta{tone}">{_signed(after - before, metric)}</span>'
            badge = _verdict_badge(cmp["verdict"]) if cmp else ""
            cards.append(
                f'<div class="card"><div class="card-label">{_esc(_label(metric))} · {_esc(variant)}</div>'
                f'<div class="card-value"><span class="muted">{_fmt(before, metric)} →</span> '
                f"{_fmt(after, metric)}</div><div>{delta} {badge}</div></div>"
            )
    return f'<section class="cards">{"".join(cards)}</section>'


def _table(summary: dict[str, Any], variants: list[str], metric_names: list[str]) -> str:
    base, tuned = variants[0], variants[1:]
    head = "<th>Metric</th>" + "".join(f"<th>{_esc(v)}</th>" for v in variants)
    for variant in tuned:
        head += f"<th>Δ {_esc(variant)} − {_esc(base)}</th><th>Verdict</th>"
    rows = []
    for metric in metric_names:
        arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
        cells = [f'<td class="metric">{_esc(_label(metric))} <span class="muted">{arrow}</span></td>']
        for variant in variants:
            m = summary["metrics"][variant].get(metric, {})
            ci = (
                f'<div class="ci">[{_fmt(m.get("low"), metric)}, {_fmt(m.get("high"), metric)}]</div>'
                if "low" in m
                else ""
            )
            cells.append(f'<td class="num">{_fmt(m.get("value"), metric)}{ci}</td>')
        for variant in tuned:
            cmp = summary.get("comparisons", {}).get(variant, {}).get(metric)
            if not cmp:
                cells.append("<td></td><td></td>")
                continue
            good = (cmp["delta"] < 0) if metric in LOWER_IS_BETTER else (cmp["delta"] > 0)
            css = "good" if good and cmp["verdict"] == "better" else "bad" if cmp["verdict"] == "worse" else ""
            detail = f"p = {cmp['p_value']:.3f}"
            if "wins" in cmp:
                detail += f" · {cmp['wins']} won / {cmp['losses']} lost"
            cells.append(
                f'<td class="num {css}">{_signed(cmp["delta"], metric)}'
                f'<div class="ci">[{_signed(cmp["low"], metric)}, {_signed(cmp["high"], metric)}]</div></td>'
                f'<td>{_verdict_badge(cmp["verdict"])}<div class="ci">{detail}</div></td>'
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    level = int(round(100 * summary.get("level", 0.95)))
    return (
        f'<section><h2>Metrics</h2><p class="muted">Same eval split, prompts and generation settings for every '
        f"variant. Brackets: {level} % bootstrap interval.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        "</section>"
    )


def _charts(curves: dict[str, dict[str, Curve]]) -> str:
    """A chart per title for its series of two points or more; a series logged once (an eval at the last step,
    a run of one logging step) is printed as its value; an empty one is left out."""
    charts = [svg_line_chart(title, series) for title, series in curves.items()]
    charts = [c for c in charts if c]
    values = [
        f"<li><b>{_esc(title)}</b> · {_esc(name)}: {_fmt(points[0][1])} at step {points[0][0]:g}</li>"
        for title, series in curves.items()
        for name, points in _curve_series(series).items()
        if len(points) == 1
    ]
    if not charts and not values:
        return ""
    return (
        "<section><h2>Training</h2>"
        + (f'<div class="charts">{"".join(charts)}</div>' if charts else "")
        + (f'<ul class="values">{"".join(values)}</ul>' if values else "")
        + "</section>"
    )


def _gallery(
    samples: Sequence[dict[str, Any]], variants: list[str], metric_names: list[str], image_root: Path | None
) -> str:
    if not samples:
        return ""
    # The answers are judged by the first metric that reads them (preference metrics read log-probabilities).
    primary = next((m for m in metric_names if m not in PAIR_METRICS), metric_names[0] if metric_names else None)
    base = variants[0]

    def changed(sample: dict[str, Any]) -> int:
        answers = {sample.get("predictions", {}).get(v, "") for v in variants}
        return 0 if len(answers) > 1 else 1

    ordered = sorted(samples, key=changed)[:GALLERY_LIMIT]
    cards = []
    for sample in ordered:
        image_html = ""
        for rel in sample.get("images", [])[:2]:
            path = Path(rel) if image_root is None else image_root / rel
            uri = _thumbnail(path)
            if uri:
                image_html += f'<img src="{uri}" alt="{_esc(rel)}">'
        refs = sample.get("references") or []
        answers = []
        for variant in variants:
            text = sample.get("predictions", {}).get(variant, "")
            score = sample.get("scores", {}).get(variant, {}).get(primary) if primary else None
            css = ""
            if score is not None and not (isinstance(score, float) and math.isnan(score)):
                good = score <= 0 if primary in LOWER_IS_BETTER else score >= 0.5
                css = "good" if good else "bad"
            tag = "base" if variant == base else "tuned"
            shown = f"{_fmt(score, primary or '')}" if score is not None else ""
            answers.append(
                f'<div class="answer {css}"><span class="who {tag}">{_esc(variant)}</span>'
                f'<span class="text">{_esc(text) or "<em>(empty)</em>"}</span>'
                f'<span class="score">{shown}</span></div>'
            )
        cards.append(
            f'<article class="sample"><div class="thumb">{image_html}</div><div class="body">'
            f'<div class="question">{_esc(sample.get("question", ""))}</div>'
            f'<div class="reference"><span class="muted">reference</span> {_esc(" | ".join(map(str, refs)))}</div>'
            + (
                f'<div class="reference"><span class="muted">rejected</span> {_esc(sample["rejected"])}</div>'
                if sample.get("rejected")
                else ""
            )
            + f"{''.join(answers)}</div></article>"
        )
    shown = len(ordered)
    note = f"{shown} of {len(samples)} samples, those where the variants answer differently first."
    return f'<section><h2>Samples</h2><p class="muted">{note}</p><div class="gallery">{"".join(cards)}</div></section>'


CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--good:#047857;--goodbg:#d1fae5;--bad:#b91c1c;
--badbg:#fee2e2;--accent:#2563eb}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 24px 48px}
header{background:#fff;border:1px solid var(--line);border-radius:14px;padding:24px 28px;margin-bottom:20px}
.eyebrow{margin:0;color:var(--accent);font-weight:600;font-size:12px;letter-spacing:.08em;text-transform:uppercase}
h1{margin:4px 0 16px;font-size:26px}h2{font-size:18px;margin:0 0 6px}
dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px 24px;margin:0}
dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}dd{margin:0;
font-weight:500;overflow-wrap:anywhere}
section{background:#fff;border:1px solid var(--line);border-radius:14px;padding:20px 24px;margin-bottom:20px}
section.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px;background:none;
border:none;padding:0}
.card{background:#fff;border:1px solid var(--line);border-radius:14px;padding:16px 18px}
.card-label{color:var(--muted);font-size:13px}.card-value{font-size:26px;font-weight:650;margin:2px 0 4px}
.delta{font-weight:600;margin-right:6px}.delta.good{color:var(--good)}.delta.bad{color:var(--bad)}.muted{color:var(--muted)}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em;
border-bottom:2px solid var(--line);padding:8px 10px;white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:10px;vertical-align:top}td.num{text-align:right;font-weight:600}
td.metric{font-weight:600}td.good{color:var(--good)}td.bad{color:var(--bad)}.ci{font-size:12px;
color:var(--muted);font-weight:400}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600}
.badge.good{background:var(--goodbg);color:var(--good)}.badge.bad{background:var(--badbg);color:var(--bad)}
.badge.neutral{background:#f1f5f9;color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}
.chart{max-width:100%;height:auto}.chart-title{font-weight:600;font-size:13px;fill:var(--ink)}
.grid{stroke:var(--line);stroke-width:1}.tick{font-size:11px;fill:var(--muted)}.legend{font-size:11px;
fill:var(--ink)}ul.values{margin:12px 0 0;padding-left:18px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.sample{display:flex;gap:14px;border:1px solid var(--line);border-radius:12px;padding:12px}
.thumb{flex:0 0 112px}.thumb img{width:112px;height:auto;border-radius:8px;border:1px solid var(--line);
display:block;margin-bottom:6px;image-rendering:pixelated}
.body{flex:1;min-width:0}.question{font-weight:600;margin-bottom:4px}.reference{font-size:13px;margin-bottom:8px}
.answer{display:flex;align-items:baseline;gap:8px;font-size:14px;padding:4px 8px;border-radius:8px;
margin-bottom:4px;background:#f8fafc}
.answer.good{background:var(--goodbg)}.answer.bad{background:var(--badbg)}
.who{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;flex:0 0 auto}
.who.base{color:var(--muted)}.who.tuned{color:var(--accent)}.text{flex:1;word-break:break-word}
.score{font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
"""
