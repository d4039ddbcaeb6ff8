/**
 * The compare page: one HTML file with nothing beside it (styles inline, charts as inline SVG, no script). It reads
 * top to bottom: the two runs, what each ran and how it ended; their metrics side by side with the difference; their
 * training curves overlaid, one chart per stage and figure; a figure with a single value is printed, not charted.
 */
import type { ComparedRun } from './compare.js';
import { formatDuration } from './print.js';
import { escapeHtml as esc, svgLineChart, type Curve } from './svg-chart.js';

const COLOURS = ['#2563eb', '#db2777'] as const;

export function comparePage(a: ComparedRun, b: ComparedRun): string {
  const runs = [a, b] as const;
  const title = `${a.id} vs ${b.id}`;
  return (
    '<!doctype html><html lang=en><head><meta charset=utf-8>' +
    '<meta name="viewport" content="width=device-width, initial-scale=1">' +
    `<title>${esc(title)}</title><style>${CSS}</style></head><body><main>` +
    `<header><p class="eyebrow">vlmflow · compare</p><h1>${runs.map((r, i) => swatch(i) + esc(r.id)).join(' <span class="muted">vs</span> ')}</h1>` +
    `<p class="muted">Written ${esc(new Date().toISOString())}.</p></header>` +
    runsSection(runs) +
    metricsSection(runs) +
    curvesSection(runs) +
    notesSection(runs) +
    '<footer>Made by vlmflow. Metrics: the evaluation each run ended with; curves: its training logs.</footer>' +
    '</main></body></html>'
  );
}

function swatch(i: number): string {
  return `<span class="swatch" style="background:${COLOURS[i]}"></span>`;
}

function runsSection(runs: readonly [ComparedRun, ComparedRun]): string {
  const rows: [string, (r: ComparedRun) => string][] = [
    ['Outcome', (r) => (r.result.status === 'completed' ? 'completed' : 'completed, gate flagged it')],
    ['Model', (r) => esc(r.model)],
    ['Dataset', (r) => esc(r.dataset)],
    ['Started', (r) => esc(r.started.toISOString())],
    ['Took', (r) => (r.closed ? formatDuration(r.closed.getTime() - r.started.getTime()) : '')],
    [
      'Stages',
      (r) => r.result.stages.map((s) => `${esc(s.name)} <span class="muted">${esc(s.status)}</span>`).join(', '),
    ],
    ['Gate', (r) => esc(r.result.gate?.message ?? 'none')],
    ['Adapter', (r) => esc(r.result.adapterUri)],
    [
      'Report',
      (r) => (r.result.reportUri ? `<a href="${esc(fileUrl(r.result.reportUri))}">${esc(r.result.reportUri)}</a>` : ''),
    ],
  ];
  const head = `<th></th>${runs.map((r, i) => `<th>${swatch(i)}${esc(r.id)}</th>`).join('')}`;
  const body = rows.map(
    ([label, cell]) => `<tr><td class="metric">${label}</td>${runs.map((r) => `<td>${cell(r)}</td>`).join('')}</tr>`,
  );
  return `<section><h2>Runs</h2><div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${body.join('')}</tbody></table></div></section>`;
}

function metricsSection(runs: readonly [ComparedRun, ComparedRun]): string {
  // "<variant>/<metric>" values and "<variant>/<metric>/delta" against the base; the 0/1 "better" flags are the
  // report's verdicts and read poorly as numbers.
  const names = [...new Set(runs.flatMap((r) => Object.keys(r.result.metrics)))]
    .filter((n) => !n.endsWith('/better'))
    .sort(byMetric);
  if (!names.length)
    return '<section><h2>Metrics</h2><p class="muted">Neither run has evaluation metrics.</p></section>';
  const rows = names.map((name) => {
    const [x, y] = runs.map((r) => r.result.metrics[name]);
    const diff = x !== undefined && y !== undefined ? signed(y - x) : '';
    return `<tr><td class="metric">${esc(name)}</td><td class="num">${fmt(x)}</td><td class="num">${fmt(y)}</td><td class="num">${diff}</td></tr>`;
  });
  const head = `<th>Metric</th>${runs.map((r, i) => `<th>${swatch(i)}${esc(r.id)}</th>`).join('')}<th>Δ second − first</th>`;
  return (
    '<section><h2>Metrics</h2><p class="muted">From each run’s evaluation: base and tuned variants, and each tuned ' +
    'variant’s delta against its base.</p>' +
    `<div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${rows.join('')}</tbody></table></div></section>`
  );
}

function curvesSection(runs: readonly [ComparedRun, ComparedRun]): string {
  const names = [...new Set(runs.flatMap((r) => [...r.curves.keys()]))];
  const charts: string[] = [];
  const single: string[] = [];
  for (const name of names) {
    const series = runs.map((r, i) => ({ name: r.id, colour: COLOURS[i]!, points: r.curves.get(name) ?? [] }));
    const chart = svgLineChart(name, series);
    if (chart) {
      charts.push(
        `<figure>${chart}<figcaption>${series.map((s, i) => legend(i, s.name, s.points)).join('')}</figcaption></figure>`,
      );
    } else {
      // A figure logged once (an eval at the last step, say) is a value, not a curve.
      const values = series
        .map((s, i) => (s.points.length ? `${swatch(i)}${esc(s.name)}: ${lastValue(s.points)}` : ''))
        .filter(Boolean);
      if (values.length) single.push(`<li><b>${esc(name)}</b> — ${values.join('; ')}</li>`);
    }
  }
  if (!charts.length && !single.length) {
    return '<section><h2>Training</h2><p class="muted">Neither run has a training log with figures.</p></section>';
  }
  return (
    '<section><h2>Training</h2>' +
    (charts.length ? `<div class="charts">${charts.join('')}</div>` : '') +
    (single.length ? `<ul class="single">${single.join('')}</ul>` : '') +
    '</section>'
  );
}

/**
 * Metric names are "<variant>/<metric>" and "<variant>/<metric>/delta": quality metrics before throughput
 * (items_per_second), then by metric, the values (base first) before the deltas.
 */
function byMetric(x: string, y: string): number {
  const key = (name: string) => {
    const [variant = '', metric = '', delta] = name.split('/');
    return [metric === 'items_per_second' ? 1 : 0, metric, delta ? 1 : 0, variant === 'base' ? '' : variant] as const;
  };
  const [a, b] = [key(x), key(y)];
  for (let i = 0; i < a.length; i++) {
    if (a[i]! < b[i]!) return -1;
    if (a[i]! > b[i]!) return 1;
  }
  return 0;
}

function legend(i: number, name: string, points: Curve): string {
  const shown = points.length ? `last ${lastValue(points)}` : 'not logged';
  return `<span class="legend">${swatch(i)}${esc(name)} <span class="muted">(${shown})</span></span>`;
}

function lastValue(points: Curve): string {
  const [step, value] = points.at(-1)!;
  return `${fmt(value)} at step ${step}`;
}

function notesSection(runs: readonly [ComparedRun, ComparedRun]): string {
  const notes = runs.flatMap((r) => r.unreadable.map((why) => `<li>${esc(r.id)}: ${esc(why)}</li>`));
  return notes.length ? `<section><h2>Left out</h2><ul>${notes.join('')}</ul></section>` : '';
}

function fmt(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '–';
  return Math.abs(value) >= 100 || Number.isInteger(value) ? String(Number(value.toFixed(2))) : value.toPrecision(4);
}

function signed(value: number): string {
  const text = fmt(value);
  return value > 0 ? `+${text}` : text;
}

function fileUrl(p: string): string {
  return p.includes('://') ? p : `file://${encodeURI(p)}`;
}

const CSS = `
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--accent:#2563eb}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 24px 48px}
header,section{background:#fff;border:1px solid var(--line);border-radius:14px;padding:20px 24px;margin-bottom:20px}
.eyebrow{margin:0;color:var(--accent);font-weight:600;font-size:12px;letter-spacing:.08em;text-transform:uppercase}
h1{margin:4px 0 8px;font-size:22px;overflow-wrap:anywhere}h2{font-size:18px;margin:0 0 6px}.muted{color:var(--muted)}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:12px;color:var(--muted);border-bottom:2px solid var(--line);padding:8px 10px;
overflow-wrap:anywhere}
td{border-bottom:1px solid var(--line);padding:8px 10px;vertical-align:top;overflow-wrap:anywhere}
td.num{text-align:right;font-weight:600}td.metric{font-weight:600;white-space:nowrap}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}
figure{margin:0}figcaption{font-size:12px;display:flex;flex-wrap:wrap;gap:4px 14px;padding-left:52px}
.chart{max-width:100%;height:auto}.chart-title{font-weight:600;font-size:13px;fill:var(--ink)}
.grid{stroke:var(--line);stroke-width:1}.tick{font-size:11px;fill:var(--muted)}
ul.single{margin:12px 0 0;padding-left:18px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
`;
