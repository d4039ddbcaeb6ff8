/**
 * Test and demo data built by the Python worker's own commands: the tiny random-weight Idefics3 model and
 * deterministic synthetic tasks. The demo, the tests and the benchmarks all build them through here.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { workerPython } from '../paths.js';

/** `python -m vlmflow_worker.fixtures.tiny_model`: rebuilds only when its recipe changed. */
export async function buildTinyModel(out: string): Promise<void> {
  await execa(workerPython, ['-m', 'vlmflow_worker.fixtures.tiny_model', '--out', out]);
}

export interface SyntheticTask {
  task: string;
  rows: number;
  seed: number;
  out: string;
  /** Preference rows (chosen = the right answer, rejected = a wrong one) for DPO. */
  preference?: boolean;
}

/** `python -m vlmflow_worker.fixtures.synthetic`: the same rows for the same task, count and seed. */
export async function generateSyntheticTask(t: SyntheticTask): Promise<void> {
  const args = ['--task', t.task, '--rows', String(t.rows), '--seed', String(t.seed), '--out', t.out];
  await execa(workerPython, [
    '-m',
    'vlmflow_worker.fixtures.synthetic',
    ...args,
    ...(t.preference ? ['--preference'] : []),
  ]);
}

/** What the offline demo needs in the artifact store: models/tiny-idefics3 and data/shape_colour. */
export async function buildDemoAssets(artifactRoot: string): Promise<void> {
  await buildTinyModel(path.join(artifactRoot, 'models', 'tiny-idefics3'));
  const data = path.join(artifactRoot, 'data', 'shape_colour');
  if (!existsSync(path.join(data, 'data.jsonl'))) {
    await generateSyntheticTask({ task: 'shape_colour', rows: 160, seed: 0, out: data });
  }
}
