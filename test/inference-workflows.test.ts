/**
 * batchInference and videoUnderstanding on the real dev server, the real Python worker and the tiny model, over
 * the real demo photos and video in ../shared/data: results JSONL with one answer per image, shard files that
 * a second run skips, and per-segment descriptions with a summary.
 */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { parseInputActivities } from '../activities/parse-input.js';
import { Worker, type WorkflowBundlePath } from '@temporalio/worker';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../activities/index.js';
import { projectRoot, stateDir, temporalCli } from '../src/paths.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { createPythonWorkerClient, type PythonWorkerClient } from '../src/python-worker-client.js';
import { heartbeatThrottle } from '../src/temporal-worker.js';
import { batchInference } from '../workflows/batch-inference.js';
import { videoUnderstanding } from '../workflows/video-understanding.js';
import { tempDir } from './helpers.js';
import { recordHistory } from './history-fixtures.js';
import { buildTinyModel } from '../src/cli/demo-assets.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

const demo = path.resolve(projectRoot, '..', 'shared', 'data', 'llamafactory-mllm-demo', 'mllm_demo_data');
const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');

describe('inference workflows (real Temporal, real Python worker, tiny model)', () => {
  let env: TestWorkflowEnvironment;
  let python: PythonWorker;
  let client: PythonWorkerClient;
  let workflowBundle: WorkflowBundlePath;
  let images: string;

  beforeAll(async () => {
    const artifacts = tempDir('inference-artifacts');
    // Five images in nested folders: three photos, and two of them again under another name.
    images = path.join(artifacts, 'images');
    mkdirSync(path.join(images, 'more'), { recursive: true });
    for (const name of ['1.jpg', '2.jpg', '3.jpg']) copyFileSync(path.join(demo, name), path.join(images, name));
    copyFileSync(path.join(demo, '1.jpg'), path.join(images, 'more', 'a.jpg'));
    copyFileSync(path.join(demo, '2.jpg'), path.join(images, 'more', 'b.jpg'));
    workflowBundle = sharedWorkflowBundle();
    [env] = await Promise.all([
      TestWorkflowEnvironment.createLocal({
        server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
      }),
      buildTinyModel(tinyModel),
    ]);
    python = await startPythonWorker({ artifactRoot: artifacts, dataRoots: [demo] });
    client = createPythonWorkerClient(python.address);
  }, 300_000);

  afterAll(async () => {
    client?.close();
    await Promise.all([env?.teardown(), python?.stop()]);
  });

  async function withWorkers<T>(body: (taskQueue: string, gpuTaskQueue: string) => Promise<T>): Promise<T> {
    const taskQueue = `inference-${randomUUID()}`;
    const gpuTaskQueue = `${taskQueue}-gpu`;
    const workflows = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle,
      activities: parseInputActivities,
    });
    const activities = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: gpuTaskQueue,
      activities: createActivities(client),
      maxConcurrentActivityTaskExecutions: 2,
      ...heartbeatThrottle,
    });
    return workflows.runUntil(activities.runUntil(body(taskQueue, gpuTaskQueue)));
  }

  it('captions a folder of images in bounded parallel shards into one JSONL, and a re-run skips finished shards', async () => {
    const input = {
      model: { id: tinyModel },
      task: 'caption',
      input: images,
      outputUri: `runs/batch-${randomUUID()}`,
      shardSize: 2,
      parallelism: 2,
      generation: { maxNewTokens: 4 },
    };
    const first = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(batchInference, {
        taskQueue,
        workflowId: `batch-${randomUUID()}`,
        args: [input, { gpuTaskQueue }],
      });
      const done = await handle.result();
      await recordHistory(handle, 'batch-inference-v2');
      return done;
    });
    expect(first).toMatchObject({ items: 5, shards: 3, skippedShards: 0 });
    const rows = readFileSync(first.resultsUri, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id: string; image: string; answer: string });
    expect(rows.map((r) => r.id)).toEqual(['1.jpg', '2.jpg', '3.jpg', 'more/a.jpg', 'more/b.jpg']);
    expect(rows.every((r) => typeof r.answer === 'string' && r.image.startsWith(images))).toBe(true);

    const again = await withWorkers((taskQueue, gpuTaskQueue) =>
      env.client.workflow.execute(batchInference, {
        taskQueue,
        workflowId: `batch-${randomUUID()}`,
        args: [input, { gpuTaskQueue }],
      }),
    );
    expect(again).toMatchObject({ items: 5, shards: 3, skippedShards: 3, resultsUri: first.resultsUri });
  });

  it('describes a video segment by segment and summarizes it', async () => {
    const result = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(videoUnderstanding, {
        taskQueue,
        workflowId: `video-${randomUUID()}`,
        args: [
          {
            model: { id: tinyModel },
            video: path.join(demo, '1.mp4'),
            segmentSeconds: 1,
            framesPerSegment: 2,
            maxSegments: 3,
            generation: { maxNewTokens: 4 },
          },
          { gpuTaskQueue },
        ],
      });
      const done = await handle.result();
      await recordHistory(handle, 'video-understanding-v2');
      return done;
    });
    // 1.mp4 is longer than 3 s, so three segments share its length.
    expect(result.segments).toHaveLength(3);
    const length = result.segments[1]!.start;
    expect(length).toBeGreaterThanOrEqual(1);
    expect(result.segments.map((s) => s.start)).toEqual([0, length, 2 * length]);
    expect(result.segments[2]!.end).toBeGreaterThan(2 * length);
    expect(result.segments.every((s) => typeof s.description === 'string')).toBe(true);
    expect(typeof result.summary).toBe('string');
  });
});
