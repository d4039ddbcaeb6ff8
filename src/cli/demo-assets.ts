/**
 * What the offline demo needs in the artifact store, built by the Python worker's own commands: the tiny
 * random-weight Idefics3 model (models/tiny-idefics3) and the synthetic shape-colour task
 * (data/shape_colour). Both are deterministic and skipped when already there.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { workerPython } from '../paths.js';

export async function buildDemoAssets(artifactRoot: string): Promise<void> {
  const model = path.join(artifactRoot, 'models', 'tiny-idefics3');
  const data = path.join(artifactRoot, 'data', 'shape_colour');
  // tiny_model rebuilds only when its recipe changed.
  await execa(workerPython, ['-m', 'vlmflow_worker.tiny_model', '--out', model]);
  if (!existsSync(path.join(data, 'data.jsonl'))) {
    await execa(workerPython, [
      '-m',
      'vlmflow_worker.synthetic',
      '--task',
      'shape_colour',
      '--rows',
      '160',
      '--seed',
      '0',
      '--out',
      data,
    ]);
  }
}
