/**
 * Once per test run: the workflows bundled into one file, as `vlmflow bundle` writes it for a deployed worker
 * (docker/ts-worker.Dockerfile). Every test worker loads that file instead of bundling workflows/ again at its start:
 * webpack costs about 5 s of CPU a time, and the suite starts about 30 TS workers on a 2-core machine, several of
 * them on a fault test's recovery path.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { writeWorkflowBundle } from '../src/cli/bundle.js';
import { quietLogger } from './temporal-helpers.js';

declare module 'vitest' {
  export interface ProvidedContext {
    workflowBundlePath: string;
  }
}

export default async function setup(project: TestProject): Promise<() => void> {
  const folder = mkdtempSync(path.join(os.tmpdir(), 'vlmflow-test-bundle-'));
  const file = path.join(folder, 'workflow-bundle.js');
  await writeWorkflowBundle(file, quietLogger);
  project.provide('workflowBundlePath', file);
  return () => rmSync(folder, { recursive: true, force: true });
}
