/**
 * `vlmflow compare <runA> <runB>`: one self-contained HTML page with two completed runs side by side: what they
 * ran, their metrics (the evaluate stage's figures, which the run's result carries) and their training curves
 * overlaid. The curves come from each training stage's `training_log.jsonl` (the trainer's log lines: loss, eval
 * loss, learning rate, DPO rewards), named by the stage's `training_log` artifact; those paths are the Python
 * worker's artifact store, so compare reads them where that store is visible (a missing log is reported, not fatal).
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { PipelineResult } from '../../workflows/fine-tune-pipeline.js';
import { VlmflowDataset, VlmflowModel } from '../config/search-attributes.js';
import { comparePage } from './compare-page.js';
import { withClient, type Connected } from './connect.js';
import { ExitCode } from './exit-codes.js';
import { existing } from './runs.js';
import type { Curve } from './svg-chart.js';

export interface ComparedRun {
  id: string;
  model: string;
  dataset: string;
  started: Date;
  closed?: Date;
  result: PipelineResult;
  /** "<stage> <curve>" (e.g. "sft loss") -> points, in step order. */
  curves: Map<string, Curve>;
  /** Training logs the run names but this machine cannot read, with why. */
  unreadable: string[];
}

export function compare(runA: string, runB: string, opts: { out?: string }): Promise<number> {
  return withClient(async (c) => {
    const runs = [await loadRun(c, runA), await loadRun(c, runB)] as const;
    const out = path.resolve(opts.out ?? `compare-${fileSafe(runA)}-vs-${fileSafe(runB)}.html`);
    await writeFile(out, comparePage(runs[0], runs[1]));
    for (const run of runs) {
      for (const why of run.unreadable) console.error(`vlmflow: ${run.id}: ${why}`);
    }
    console.log(`Wrote ${out}: ${runA} and ${runB} side by side; open it in a browser.`);
    return ExitCode.ok;
  });
}

async function loadRun(c: Connected, id: string): Promise<ComparedRun> {
  const { handle, description } = await existing(c, id);
  if (description.type !== 'fineTunePipeline') {
    throw new Error(`${id} is a ${description.type} run; compare reads fineTunePipeline runs`);
  }
  const state = description.status.name;
  if (state === 'RUNNING') {
    throw new Error(`${id} has no results yet: it is still running (\`vlmflow follow ${id}\` waits for it)`);
  }
  if (state !== 'COMPLETED') {
    throw new Error(
      `${id} has no results: it ended ${state.toLowerCase().replace('_', ' ')} before finishing ` +
        `(\`vlmflow status ${id}\` shows where; \`vlmflow retry ${id}\` finishes it)`,
    );
  }
  const result = await handle.result();
  const curves = new Map<string, Curve>();
  const unreadable: string[] = [];
  for (const stage of result.stages) {
    const log = stage.artifacts?.training_log;
    if (!log) continue;
    try {
      for (const [name, points] of parseTrainingLog(await readFile(log, 'utf8'))) {
        curves.set(`${stage.name} ${name}`, points);
      }
    } catch (err) {
      unreadable.push(
        `cannot read the ${stage.name} training log ${log} (${(err as Error).message.split('\n')[0]}); ` +
          'its curves are left out. Run compare where the Python worker’s artifact store is visible.',
      );
    }
  }
  if (!Object.keys(result.metrics).length && !curves.size) {
    throw new Error(`${id} has no results to compare: no evaluation metrics and no readable training log`);
  }
  const sa = description.typedSearchAttributes;
  return {
    id,
    model: sa.get(VlmflowModel) ?? '',
    dataset: sa.get(VlmflowDataset) ?? '',
    started: description.startTime,
    closed: description.closeTime,
    result,
    curves,
    unreadable,
  };
}

/** The figures of a trainer's log worth a curve, by the name they get on the page. */
const CURVE_NAMES: Record<string, string> = {
  loss: 'loss',
  eval_loss: 'eval loss',
  learning_rate: 'learning rate',
  grad_norm: 'gradient norm',
  'rewards/margins': 'reward margin',
  'rewards/accuracies': 'reward accuracy',
  eval_rewards_margins: 'eval reward margin',
  eval_rewards_accuracies: 'eval reward accuracy',
};

/**
 * Curves from `training_log.jsonl`: one JSON object per logging step ({"step", "loss", "learning_rate", ...});
 * eval lines carry "eval_*" and the closing line "train_runtime" (skipped). A resumed stage appends to the same
 * log, so a step logged twice keeps its newest value.
 */
export function parseTrainingLog(text: string): Map<string, Curve> {
  const byName = new Map<string, Map<number, number>>();
  for (const line of text.split('\n')) {
    let entry: unknown;
    try {
      entry = JSON.parse(line);
    } catch {
      continue; // a blank line, or a line cut short by a crash
    }
    if (typeof entry !== 'object' || entry === null || 'train_runtime' in entry) continue;
    const record = entry as Record<string, unknown>;
    if (typeof record.step !== 'number') continue;
    for (const [key, value] of Object.entries(record)) {
      const name = CURVE_NAMES[key.replace(/^eval_rewards\//, 'eval_rewards_')];
      if (!name || typeof value !== 'number' || !Number.isFinite(value)) continue;
      if (!byName.has(name)) byName.set(name, new Map());
      byName.get(name)!.set(record.step, value);
    }
  }
  return new Map([...byName].map(([name, steps]) => [name, [...steps].sort(([a], [b]) => a - b)]));
}

function fileSafe(id: string): string {
  return id.replace(/[^\w.-]+/g, '_');
}
