/**
 * `vlmflow bundle <file>`: the workflows bundled once (webpack, as the Temporal SDK does at worker start) into one
 * file, so a deployed worker starts in a second and runs exactly the code its image was built with.
 *
 *   node bin/vlmflow.js bundle /app/workflow-bundle.js      (docker/ts-worker.Dockerfile)
 */
import { bundleWorkflowCode, type Logger } from '@temporalio/worker';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { workflowsPath } from '../temporal-worker.js';
import { ExitCode } from './exit-codes.js';

/** Bundles workflows/ into `file` (the test suite's global setup does the same once per run); returns its bytes. */
export async function writeWorkflowBundle(file: string, logger?: Logger): Promise<number> {
  const { code } = await bundleWorkflowCode({ workflowsPath, ...(logger ? { logger } : {}) });
  mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  writeFileSync(file, code);
  return code.length;
}

export async function bundle(file: string): Promise<number> {
  const bytes = await writeWorkflowBundle(file);
  console.log(`wrote the workflow bundle (${(bytes / 1e6).toFixed(1)} MB) to ${file}`);
  return ExitCode.ok;
}
