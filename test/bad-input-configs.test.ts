/**
 * The bad-config corpus (test/bad-inputs/configs/*.json) through both gates a config passes: the zod schema the
 * CLI validates with, and a real fineTunePipeline start on the Temporal dev server (raw JSON, as typed into the
 * UI). Each case must fail non-retryably as InvalidConfig, the message naming every bad field, before any
 * activity is scheduled.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { parseInputActivities } from '../activities/parse-input.js';
import { ApplicationFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkflowBundlePath } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Activities } from '../activities/index.js';
import { formatIssues, parseConfig } from '../src/config/config-issues.js';
import { FailureType } from '../src/config/failure-types.js';
import { temporalCli } from '../src/paths.js';
import { pipelineConfigSchema } from '../src/config/pipeline-config.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { quietTemporalLogs } from './temporal-helpers.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

quietTemporalLogs();

interface BadConfig {
  name: string;
  description: string;
  config: unknown;
  /** Substrings the error must contain. */
  expect: string[];
}

const corpusDir = path.join(import.meta.dirname, 'bad-inputs', 'configs');
const corpus: BadConfig[] = readdirSync(corpusDir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => ({
    name: f.replace(/\.json$/, ''),
    ...(JSON.parse(readFileSync(path.join(corpusDir, f), 'utf8')) as Omit<BadConfig, 'name'>),
  }));

describe('bad pipeline configs', () => {
  it('the corpus holds enough cases', () => {
    expect(corpus.length).toBeGreaterThanOrEqual(25);
  });

  it.each(corpus.map((c) => [c.name, c] as const))('zod names the problem: %s', (_name, bad) => {
    const parsed = parseConfig(pipelineConfigSchema, bad.config);
    expect(parsed.ok, bad.description).toBe(false);
    const message = parsed.ok ? '' : formatIssues('pipeline config', parsed.issues);
    for (const part of bad.expect) expect(message, bad.description).toContain(part);
  });

  describe('through a real workflow start on the dev server', () => {
    let env: TestWorkflowEnvironment;
    let workflowBundle: WorkflowBundlePath;
    const activityCalls: string[] = [];

    beforeAll(async () => {
      workflowBundle = sharedWorkflowBundle();
      env = await TestWorkflowEnvironment.createLocal({
        server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
      });
    });

    afterAll(async () => {
      await env?.teardown();
    });

    it('fails every case at once, non-retryably, listing the fields, with no activity run', async () => {
      const taskQueue = `bad-${randomUUID()}`;
      const gpuTaskQueue = `${taskQueue}-gpu`;
      const record = (name: string) => () => {
        activityCalls.push(name);
        return Promise.reject(new Error(`${name} must not run for a bad config`));
      };
      const activities: Partial<Activities> = {
        prepareDataset: record('prepareDataset'),
        train: record('train'),
        evaluate: record('evaluate'),
        exportModel: record('exportModel'),
      };
      const workflows = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle,
        activities: parseInputActivities,
      });
      const gpu = await Worker.create({ connection: env.nativeConnection, taskQueue: gpuTaskQueue, activities });
      const outcomes = await workflows.runUntil(
        gpu.runUntil(
          Promise.all(
            corpus.map(async (bad) => {
              const handle = await env.client.workflow.start('fineTunePipeline', {
                taskQueue,
                workflowId: `bad-${bad.name}-${randomUUID()}`,
                args: [bad.config, { gpuTaskQueue }],
              });
              const error: unknown = await handle.result().then(
                () => undefined,
                (e: unknown) => e,
              );
              const history = await handle.fetchHistory();
              const scheduled = history.events?.filter((e) => e.activityTaskScheduledEventAttributes).length ?? 0;
              return { bad, error, scheduled };
            }),
          ),
        ),
      );
      for (const { bad, error, scheduled } of outcomes) {
        expect(error, bad.name).toBeInstanceOf(WorkflowFailedError);
        const cause = (error as WorkflowFailedError).cause;
        expect(cause, bad.name).toBeInstanceOf(ApplicationFailure);
        expect(cause, bad.name).toMatchObject({ type: FailureType.InvalidConfig, nonRetryable: true });
        for (const part of bad.expect) expect((cause as ApplicationFailure).message, bad.name).toContain(part);
        expect(scheduled, bad.name).toBe(0);
      }
      expect(activityCalls).toEqual([]);
    });
  });
});
