/**
 * `vlmflow infer caption|vqa|ocr|video <files...>`: ask a model about local images or videos and print the
 * answers. Talks to the Python worker directly (VLMFLOW_WORKER_ADDRESS, or one started for this command with
 * the files' folders as its data roots); files go by path, so nothing big crosses the wire.
 */
import type { ServiceError } from '@grpc/grpc-js';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Task, type GenerateItem } from '../gen/vlmflow/v1/generate.js';
import { loadEnv } from '../env.js';
import { stateDir } from '../paths.js';
import { startPythonWorker } from '../stack/python-worker-process.js';
import {
  createPythonWorkerClient,
  generate,
  waitForReady,
  pythonWorkerClientSecurity,
} from '../python-worker-client.js';
import { ExitCode } from './exit-codes.js';
import { quietLogs } from './quiet-logs.js';

export const inferTasks = ['caption', 'vqa', 'ocr', 'video'] as const;
export type InferTask = (typeof inferTasks)[number];

export interface InferOptions {
  model: string;
  prompt?: string;
  maxNewTokens: number;
  frames: number;
}

const TASKS: Record<InferTask, Task> = {
  caption: Task.TASK_CAPTION,
  vqa: Task.TASK_VQA,
  ocr: Task.TASK_OCR,
  video: Task.TASK_VIDEO,
};

export async function infer(task: InferTask, files: string[], opts: InferOptions): Promise<number> {
  quietLogs();
  if (task === 'vqa' && !opts.prompt) throw new Error('vqa needs a question: pass --prompt "..."');
  const paths = files.map((f) => path.resolve(f));
  const missing = paths.filter((p) => !existsSync(p));
  if (missing.length) throw new Error(`no such file: ${missing.join(', ')}`);

  const env = loadEnv();
  const started = env.VLMFLOW_WORKER_ADDRESS
    ? undefined
    : await startPythonWorker({
        artifactRoot: env.VLMFLOW_ARTIFACT_ROOT ?? path.join(stateDir, 'artifacts'),
        dataRoots: [...new Set(paths.map((p) => path.dirname(p)))],
      });
  const client = createPythonWorkerClient(
    env.VLMFLOW_WORKER_ADDRESS ?? started!.address,
    pythonWorkerClientSecurity(env),
  );
  try {
    await waitForReady(client);
    const items: GenerateItem[] = paths.map((p, i) => ({
      id: String(i),
      task: TASKS[task],
      prompt: opts.prompt ?? '',
      messages: [],
      images: task === 'video' ? [] : [{ source: { $case: 'uri', value: p } }],
      video:
        task === 'video'
          ? { uri: p, numFrames: opts.frames, fps: 0, maxFrames: 0, startSeconds: 0, endSeconds: 0 }
          : undefined,
    }));
    const model = opts.model.includes('/') && existsSync(opts.model) ? path.resolve(opts.model) : opts.model;
    const reply = await generate(client, {
      model: { modelId: model },
      items,
      generation: { maxNewTokens: opts.maxNewTokens },
    }).catch((err: ServiceError) => {
      throw new Error(`the worker could not answer: ${err.details || err.message}`);
    });
    for (const r of reply.results) {
      console.log(`${files[Number(r.id)]}: ${r.text.trim()}`);
    }
    if (reply.timings)
      console.log(`(${reply.timings.totalSeconds.toFixed(1)} s, model load ${reply.timings.loadSeconds.toFixed(1)} s)`);
    return ExitCode.ok;
  } finally {
    client.close();
    await started?.stop();
  }
}
