/**
 * Replay fixtures: the histories of real runs, kept in test/fixtures/histories and replayed by replay.test.ts
 * against today's workflow code. `VLMFLOW_RECORD_FIXTURES=1 npx vitest run <file>` records the runs of a test
 * file. A fixture is never recorded over: it stands for runs that were in flight when it was made, and new code
 * must still replay it. A behaviour change gets fixtures under new names (the `-v2` of Patches.recordedInput, the
 * `-v3` of Patches.uiStory).
 */
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const fixturesDir = path.join(import.meta.dirname, 'fixtures', 'histories');

export async function recordHistory(handle: WorkflowHandle, name: string): Promise<void> {
  if (!process.env.VLMFLOW_RECORD_FIXTURES) return;
  const file = path.join(fixturesDir, `${name}.json`);
  if (existsSync(file)) return; // kept as recorded: see the file comment
  mkdirSync(fixturesDir, { recursive: true });
  const history = temporal.api.history.v1.History.fromObject(await handle.fetchHistory());
  writeFileSync(file, JSON.stringify(history.toJSON(), null, 1) + '\n');
}
