/** `vlmflow status | follow | list | cancel | pause | resume | retry`: look at and steer pipeline runs. */
import { WorkflowNotFoundError, type WorkflowExecutionInfo } from '@temporalio/client';
import { pauseSignal, resumeSignal } from '../../workflows/definitions.js';
import { WAITING_FOR_GPU } from '../../activities/job-runner.js';
import { readPipelineProgress } from '../run-progress.js';
import { fineTunePipeline } from '../../workflows/fine-tune-pipeline.js';
import { startMetadata } from '../../workflows/run-story.js';
import { pipelineConfigSchema } from '../config/pipeline-config.js';
import { planRetry } from './retry-plan.js';
import { VlmflowDataset, VlmflowModel, VlmflowStage, VlmflowStatus } from '../config/search-attributes.js';
import { withClient, type Connected } from './connect.js';
import { ExitCode } from './exit-codes.js';
import { followOrDetach, printResult } from './follow.js';
import { describeFailure, formatEta, stageLines } from './print.js';

/** The run's handle and description; an unknown id is a sentence pointing at `vlmflow list`. */
export async function existing(c: Connected, workflowId: string) {
  const handle = c.client.workflow.getHandle<typeof fineTunePipeline>(workflowId);
  try {
    return { handle, description: await handle.describe() };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError)
      throw new Error(`there is no run with id ${workflowId}; \`vlmflow list\` shows the runs`);
    throw err;
  }
}

export function status(workflowId: string): Promise<number> {
  return withClient(async (c) => {
    const { handle, description } = await existing(c, workflowId);
    const state = description.status.name;
    console.log(`${workflowId}: ${state.toLowerCase()} (started ${description.startTime.toISOString()})`);
    if (state === 'COMPLETED') {
      printResult(process.stdout, workflowId, await handle.result());
      return ExitCode.ok;
    }
    try {
      const p = await readPipelineProgress(handle);
      if (p.stage) {
        const steps = p.phase === WAITING_FOR_GPU ? p.phase : p.totalSteps ? `step ${p.step}/${p.totalSteps}` : '';
        const loss = p.loss !== null ? ` · loss ${p.loss.toFixed(4)}` : '';
        console.log(`  stage ${p.stage} (${p.status}) ${steps}${loss} · ETA ${formatEta(p.etaSeconds)}`);
      }
      if (p.lastCheckpoint) console.log(`  last checkpoint: ${p.lastCheckpoint}`);
      for (const line of stageLines(p.stages)) console.log(line);
    } catch (err) {
      console.log(
        `  (progress unavailable: no workflow worker answered the query — ${String((err as Error).message).split('\n')[0]})`,
      );
    }
    if (state === 'FAILED' || state === 'TERMINATED' || state === 'TIMED_OUT') {
      const failure = await handle.result().catch((e: unknown) => e);
      console.log(`  ${state === 'FAILED' ? 'failed' : 'ended'}: ${describeFailure(failure)}`);
    }
    return endedCodes[state] ?? ExitCode.ok;
  });
}

/** `status` of a run that ended without completing; a running, paused or continued run is 0. */
const endedCodes: Partial<Record<string, number>> = {
  FAILED: ExitCode.failed,
  CANCELLED: ExitCode.cancelled,
  TERMINATED: ExitCode.terminated,
  TIMED_OUT: ExitCode.timedOut,
};

/** `vlmflow follow`: the progress bar of a run started elsewhere (or detached from), until it ends or Ctrl-C. */
export function follow(workflowId: string): Promise<number> {
  return withClient(async (c) => {
    const { handle } = await existing(c, workflowId);
    console.log(`Following ${workflowId}; Ctrl-C stops following, the run goes on.`);
    return followOrDetach(handle);
  });
}

export interface ListOptions {
  status?: string;
  model?: string;
  stage?: string;
  limit: number;
}

export function list(opts: ListOptions): Promise<number> {
  return withClient(async (c) => {
    const filters = [`WorkflowType = 'fineTunePipeline'`];
    if (opts.status) filters.push(`VlmflowStatus = '${opts.status.replace(/'/g, '')}'`);
    if (opts.model) filters.push(`VlmflowModel = '${opts.model.replace(/'/g, '')}'`);
    if (opts.stage) filters.push(`VlmflowStage = '${opts.stage.replace(/'/g, '')}'`);
    const rows: WorkflowExecutionInfo[] = [];
    for await (const wf of c.client.workflow.list({ query: filters.join(' AND ') })) {
      rows.push(wf);
      if (rows.length >= opts.limit) break;
    }
    if (!rows.length) {
      console.log('No runs match.');
      return ExitCode.ok;
    }
    const width = Math.max(...rows.map((r) => r.workflowId.length));
    for (const r of rows) {
      const sa = r.typedSearchAttributes;
      const status = sa.get(VlmflowStatus) ?? r.status.name.toLowerCase();
      const stage = sa.get(VlmflowStage) ?? '';
      console.log(
        `${r.workflowId.padEnd(width)}  ${status.padEnd(9)}  ${stage.padEnd(18)}  ${sa.get(VlmflowModel) ?? ''}  ${sa.get(VlmflowDataset) ?? ''}  ${r.startTime.toISOString()}`,
      );
    }
    return ExitCode.ok;
  });
}

export function cancel(workflowId: string): Promise<number> {
  return withClient(async (c) => {
    const { handle } = await existing(c, workflowId);
    await handle.cancel();
    console.log(`Asked ${workflowId} to cancel; the running stage saves a checkpoint and stops.`);
    return ExitCode.ok;
  });
}

export function pause(workflowId: string, reason?: string): Promise<number> {
  return withClient(async (c) => {
    const { handle } = await existing(c, workflowId);
    await handle.signal(pauseSignal, reason);
    console.log(
      `Asked ${workflowId} to pause; the running stage checkpoints and waits. \`vlmflow resume ${workflowId}\` continues it.`,
    );
    return ExitCode.ok;
  });
}

export function resume(workflowId: string): Promise<number> {
  return withClient(async (c) => {
    const { handle } = await existing(c, workflowId);
    await handle.signal(resumeSignal);
    console.log(`Resumed ${workflowId}; its stage continues from the last checkpoint.`);
    return ExitCode.ok;
  });
}

export function retry(workflowId: string, opts: { id?: string; detach: boolean }): Promise<number> {
  return withClient(async (c) => {
    const { description } = await existing(c, workflowId);
    if (description.status.name === 'RUNNING')
      throw new Error(`${workflowId} is still running; cancel it first or wait for it`);
    const plan = await planRetry(c.client, workflowId, c.env.VLMFLOW_GPU_TASK_QUEUE);
    const newId = opts.id ?? `${workflowId}-retry-${Date.now().toString(36)}`;
    // A config that no longer parses gets no summary here; the new run fails on it, listing the problems.
    const parsed = pipelineConfigSchema.safeParse(plan.config);
    const handle = await c.client.workflow.start(fineTunePipeline, {
      taskQueue: c.env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      workflowId: newId,
      args: [plan.config, plan.options],
      ...(parsed.success ? startMetadata(parsed.data) : {}),
    });
    console.log(
      `Started ${newId}${plan.reused.length ? `, reusing ${plan.reused.join(', ')}` : ''}; the next stage resumes from its newest checkpoint in ${plan.options.state?.outputRoot}.`,
    );
    return opts.detach ? ExitCode.ok : followOrDetach(handle);
  });
}
