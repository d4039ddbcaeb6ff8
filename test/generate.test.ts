/**
 * Generate through the generated TS client on the real Python worker with the tiny Idefics3 model and the real
 * demo photos and videos: one answer per item with token counts and timings, frame times for videos, and typed
 * errors naming the bad item while the worker keeps serving.
 */
import { status, type ServiceError } from '@grpc/grpc-js';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Task } from '../src/gen/vlmflow/v1/generate.js';
import { projectRoot, stateDir } from '../src/paths.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import {
  createPythonWorkerClient,
  generate,
  waitForReady,
  type PythonWorkerClient,
} from '../src/python-worker-client.js';
import { tempDir } from './helpers.js';
import { buildTinyModel } from '../src/cli/demo-assets.js';

const demo = path.resolve(projectRoot, '..', 'shared', 'data', 'llamafactory-mllm-demo');
const media = (name: string) => path.join(demo, 'mllm_demo_data', name);
const image = (name: string) => ({ source: { $case: 'uri' as const, value: media(name) } });

describe('Generate on the real worker', () => {
  let worker: PythonWorker;
  let client: PythonWorkerClient;
  let modelId: string;

  beforeAll(async () => {
    // The shared data sits beside the clone (../shared): its absence is a broken checkout, not a reason to skip.
    if (!existsSync(demo)) throw new Error(`the shared demo data is missing at ${demo}`);
    // The tiny model is built by the project (seconds, offline) and reused; the same folder pytest uses.
    modelId = path.join(stateDir, 'models', 'tiny-idefics3');
    await buildTinyModel(modelId);
    worker = await startPythonWorker({ artifactRoot: tempDir('artifacts'), dataRoots: [demo] });
    client = createPythonWorkerClient(worker.address);
    await waitForReady(client);
  });

  afterAll(async () => {
    client?.close();
    await worker?.stop();
  });

  it('answers every item with token counts, timings and frame times', async () => {
    const reply = await generate(client, {
      model: { modelId },
      items: [
        { id: 'caption', task: Task.TASK_CAPTION, images: [image('1.jpg')] },
        {
          id: 'vqa',
          task: Task.TASK_VQA,
          prompt: 'Who is he?',
          images: [{ source: { $case: 'data', value: readFileSync(media('2.jpg')) } }],
        },
        { id: 'multi', task: Task.TASK_MULTI_IMAGE, prompt: 'Same place?', images: [image('1.jpg'), image('3.jpg')] },
        {
          id: 'mp4',
          task: Task.TASK_VIDEO,
          prompt: 'Why is this funny?',
          video: { uri: media('1.mp4'), numFrames: 4 },
        },
        {
          id: 'avi',
          task: Task.TASK_VIDEO,
          prompt: 'What is she doing?',
          video: { uri: media('2.avi'), numFrames: 3 },
        },
      ],
      generation: { maxNewTokens: 5 },
      batchSize: 4,
    });
    expect(reply.results.map((r) => r.id)).toEqual(['caption', 'vqa', 'multi', 'mp4', 'avi']);
    for (const result of reply.results) {
      expect(result.promptTokens).toBeGreaterThan(16);
      expect(result.answerTokens).toBeGreaterThanOrEqual(0);
      expect(result.answerTokens).toBeLessThanOrEqual(5);
      expect(result.generateSeconds).toBeGreaterThan(0);
    }
    const result = (id: string) => {
      const found = reply.results.find((r) => r.id === id);
      if (!found) throw new Error(`no result for ${id}`);
      return found;
    };
    expect(result('mp4').frameTimestamps).toHaveLength(4);
    expect(result('avi').frameTimestamps).toHaveLength(3);
    expect([...result('mp4').frameTimestamps].sort((a, b) => a - b)).toEqual(result('mp4').frameTimestamps);
    expect(result('caption').frameTimestamps).toEqual([]);
    expect(reply.timings?.totalSeconds).toBeGreaterThan(0);
    expect(reply.timings?.generateSeconds).toBeGreaterThan(0);
  });

  it('refuses a bad item by name, then keeps serving', async () => {
    const bad = generate(client, {
      model: { modelId },
      items: [
        { id: 'fine', task: Task.TASK_CAPTION, images: [image('1.jpg')] },
        { id: 'broken', task: Task.TASK_CAPTION, images: [{ source: { $case: 'data', value: Buffer.from('junk') } }] },
      ],
    });
    await expect(bad).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    const err = (await bad.catch((e: unknown) => e)) as ServiceError;
    expect(err.details).toContain('items[1] (broken).images[0]');

    const missing = generate(client, {
      model: { modelId: path.join(tempDir('models'), 'none') },
      items: [{ prompt: 'hi' }],
    });
    await expect(missing).rejects.toMatchObject({ code: status.NOT_FOUND });

    const good = await generate(client, {
      model: { modelId },
      items: [{ id: 'again', prompt: 'Say hello.' }],
      generation: { maxNewTokens: 3 },
    });
    expect(good.results.map((r) => r.id)).toEqual(['again']);
    expect(good.timings?.loadSeconds).toBe(0); // the model stayed cached
  });
});
