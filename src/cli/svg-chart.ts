/**
 * A small inline SVG line chart (no JavaScript, nothing to load) for the compare page: one polyline per series on
 * shared axes, round y ticks, steps on x. The evaluation report draws its charts the same way in Python
 * (python-worker/src/vlmflow_worker/evaluate/report.py).
 */

/** (step, value) pairs, in step order. */
export type Curve = [number, number][];

export interface Series {
  name: string;
  colour: string;
  points: Curve;
}

/** At most this many points per polyline: a weeks-long run logs far more steps than a 460 px chart can show. */
const MAX_POINTS = 1000;

export function escapeHtml(value: unknown): string {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** The chart, or '' when no series has two finite points (one point is a value, not a curve). */
export function svgLineChart(title: string, series: Series[], width = 460, height = 240): string {
  const drawn = series
    .map((s) => ({ ...s, points: thin(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))) }))
    .filter((s) => s.points.length > 0);
  if (!drawn.some((s) => s.points.length >= 2)) return '';
  const [left, right, top, bottom] = [52, 14, 30, 34];
  const xs = drawn.flatMap((s) => s.points.map(([x]) => x));
  const ys = drawn.flatMap((s) => s.points.map(([, y]) => y));
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const ticks = niceTicks(Math.min(...ys), Math.max(...ys));
  const y0 = ticks[0]!;
  const y1 = ticks.at(-1)!;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const sx = (x: number) => (left + ((x - x0) / (x1 - x0)) * plotW).toFixed(1);
  const sy = (y: number) => (top + (1 - (y - y0) / (y1 - y0)) * plotH).toFixed(1);

  const parts = [
    `<svg class="chart" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" ` +
      `xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${escapeHtml(title)}">`,
    `<text x="${left}" y="18" class="chart-title">${escapeHtml(title)}</text>`,
  ];
  for (const tick of ticks) {
    parts.push(`<line x1="${left}" x2="${width - right}" y1="${sy(tick)}" y2="${sy(tick)}" class="grid"/>`);
    parts.push(
      `<text x="${left - 6}" y="${(Number(sy(tick)) + 4).toFixed(1)}" class="tick" text-anchor="end">${tickLabel(tick)}</text>`,
    );
  }
  for (const x of [x0, (x0 + x1) / 2, x1]) {
    parts.push(
      `<text x="${sx(x)}" y="${height - bottom + 16}" class="tick" text-anchor="middle">${Number(x.toPrecision(6))}</text>`,
    );
  }
  parts.push(`<text x="${width - right}" y="${height - 4}" class="tick" text-anchor="end">step</text>`);
  for (const s of drawn) {
    const coords = s.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(' ');
    parts.push(
      `<polyline points="${coords}" fill="none" stroke="${s.colour}" stroke-width="2" stroke-linejoin="round" ` +
        `stroke-linecap="round"><title>${escapeHtml(s.name)}</title></polyline>`,
    );
    // Dots where the points are few enough to tell apart; a single point is only visible as a dot.
    if (s.points.length <= 30) {
      for (const [x, y] of s.points) parts.push(`<circle cx="${sx(x)}" cy="${sy(y)}" r="2.5" fill="${s.colour}"/>`);
    }
  }
  parts.push('</svg>');
  return parts.join('');
}

/** Every k-th point (the last one kept) when there are more than MAX_POINTS. */
function thin(points: Curve): Curve {
  if (points.length <= MAX_POINTS) return points;
  const k = Math.ceil(points.length / MAX_POINTS);
  return points.filter((_, i) => i % k === 0 || i === points.length - 1);
}

function niceTicks(low: number, high: number, count = 5): number[] {
  if (high === low) {
    const pad = Math.abs(low) * 0.1 || 1;
    [low, high] = [low - pad, high + pad];
  }
  const raw = (high - low) / (count - 1);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks = [Math.floor(low / step) * step];
  while (ticks.at(-1)! < high - 1e-12) ticks.push(ticks.at(-1)! + step);
  return ticks;
}

function tickLabel(value: number): string {
  return value === 0 ? '0' : String(Number(value.toPrecision(3)));
}
