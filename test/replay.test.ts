/**
 * Recorded histories of the workflows (test/fixtures/histories, recorded from runs on the real dev server
 * with VLMFLOW_RECORD_FIXTURES=1) replay against today's workflow code without non-determinism: a change
 * that would break running workflows fails here.
 */
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { projectRoot } from '../src/paths.js';
import { workflowsPath } from '../src/temporal-worker.js';
import { tempDir } from './helpers.js';

const dir = path.join(import.meta.dirname, 'fixtures', 'histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

describe('replay of recorded workflow histories', () => {
  it('has fixtures to replay', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  it('covers every long-running workflow type, and a run that continued as new', () => {
    const histories = files.map(
      (f) =>
        JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as {
          events: {
            eventType: string;
            workflowExecutionStartedEventAttributes?: { workflowType?: { name?: string } };
          }[];
        },
    );
    const types = new Set(
      histories.map((h) => h.events[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name),
    );
    expect([...types].sort()).toEqual(['batchInference', 'fineTunePipeline', 'videoUnderstanding']);
    const ends = histories.map((h) => h.events.at(-1)?.eventType);
    expect(ends).toContain('EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW');
  });

  const histories = () =>
    files.map((file) => ({
      workflowId: file,
      history: temporal.api.history.v1.History.fromObject(
        JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as object,
      ),
    }));

  it('replays every recorded history without non-determinism', async () => {
    const failures: string[] = [];
    for await (const result of Worker.runReplayHistories({ workflowsPath }, histories())) {
      if (result.error) failures.push(`${result.workflowId}: ${String(result.error)}`);
    }
    expect(failures).toEqual([]);
  });

  it('replays them with the bundle `vlmflow bundle` writes, which a deployed worker loads', async () => {
    const codePath = path.join(tempDir('bundle'), 'workflow-bundle.js');
    const made = await execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), 'bundle', codePath]);
    expect(made.stdout).toContain('wrote the workflow bundle');
    const failures: string[] = [];
    for await (const result of Worker.runReplayHistories({ workflowBundle: { codePath } }, histories())) {
      if (result.error) failures.push(`${result.workflowId}: ${String(result.error)}`);
    }
    expect(failures).toEqual([]);
  }, 120_000);
});
