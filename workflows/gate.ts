/** The quality gate: does the tuned model beat the base on the chosen metric by the configured margin? */
import type { PipelineConfig } from '../src/config/pipeline-config.js';

export interface GateResult {
  metric: string;
  base: number | null;
  tuned: number | null;
  margin: number;
  passed: boolean;
  message: string;
}

/**
 * Reads `<variant><sep><metric>` from the evaluation's metrics (sep one of "/", ".", ":", "_") for the base
 * and the tuned variant and compares them. A missing metric fails the gate with a message saying so.
 */
export function compareMetric(
  metrics: Record<string, number>,
  gate: NonNullable<PipelineConfig['gate']>,
  tunedVariant: string,
): GateResult {
  const base = variantMetric(metrics, 'base', gate.metric);
  const tuned = variantMetric(metrics, tunedVariant, gate.metric);
  const result = { metric: gate.metric, base, tuned, margin: gate.margin };
  if (base === null || tuned === null) {
    const missing = [base === null ? 'base' : '', tuned === null ? tunedVariant : ''].filter(Boolean).join(' and ');
    return {
      ...result,
      passed: false,
      message: `the evaluation has no ${gate.metric} for ${missing}; metrics present: ${Object.keys(metrics).join(', ') || 'none'}`,
    };
  }
  const gain = gate.lowerIsBetter ? base - tuned : tuned - base;
  const passed = gain >= gate.margin;
  const verb = passed ? 'beats' : 'does not beat';
  return {
    ...result,
    passed,
    message: `${tunedVariant} ${verb} base on ${gate.metric} by the margin ${gate.margin}: ${fmt(tuned)} vs ${fmt(base)}`,
  };
}

export function variantMetric(metrics: Record<string, number>, variant: string, metric: string): number | null {
  for (const sep of ['/', '.', ':', '_']) {
    const value = metrics[`${variant}${sep}${metric}`];
    if (typeof value === 'number') return value;
  }
  return null;
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(4);
}
