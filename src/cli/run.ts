/**
 * `vlmflow run <config.yaml|json>`: validate the config (same schema as the workflow), start fineTunePipeline,
 * follow it with a live progress bar, print the result and the report path; the exit code is the outcome.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import path from 'node:path';
import { fineTunePipeline } from '../../workflows/fine-tune-pipeline.js';
import { startMetadata } from '../../workflows/run-story.js';
import { readConfigFile } from './config-file.js';
import { withClient } from './connect.js';
import { ExitCode } from './exit-codes.js';
import { followOrDetach } from './follow.js';

export interface RunOptions {
  id?: string;
  detach: boolean;
}

/** `<name>-<YYYYMMDD-HHMMSS>`: readable in the UI list and unique per second. */
export function newRunId(name: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${name}-${stamp}`;
}

export async function run(file: string, opts: RunOptions): Promise<number> {
  const { raw, config } = readConfigFile(file);
  return withClient(async ({ client, env }) => {
    const workflowId = opts.id ?? newRunId(config.name);
    try {
      const handle = await client.workflow.start(fineTunePipeline, {
        taskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
        workflowId,
        args: [raw, { gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE }],
        memo: { configFile: path.resolve(file) },
        ...startMetadata(config),
      });
      console.log(
        `Started ${workflowId} (${config.model.id} on ${config.dataset.sources.map((s) => s.uri).join(', ')}).`,
      );
      if (opts.detach) {
        console.log(
          `Follow it with \`vlmflow follow ${workflowId}\`; \`vlmflow status ${workflowId}\` shows where it is.`,
        );
        return ExitCode.ok;
      }
      console.log('Ctrl-C stops following; the run goes on.');
      return await followOrDetach(handle);
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        throw new Error(`a run with id ${workflowId} already exists; pick another --id`);
      }
      throw err;
    }
  });
}
