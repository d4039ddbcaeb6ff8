/**
 * `vlmflow retry`: start a failed or cancelled fineTunePipeline again from where it stopped. Reads the old run's
 * history (no worker needed): its input, and every stage activity that completed. The new run gets those as
 * finished stages and the old run's output folder, so the stage that failed resumes from its newest checkpoint
 * there instead of starting over.
 */
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import type { JobResult } from '../../activities/index.js';
import type { StageName } from '../../workflows/definitions.js';
import type { PipelineOptions, PipelineState } from '../../workflows/fine-tune-pipeline.js';
import { Patches } from '../../workflows/patches.js';
import { runOutputRoot } from '../../workflows/run-scope.js';

export interface RetryPlan {
  /** The old run's raw config (parsed again by the new run). */
  config: unknown;
  options: PipelineOptions;
  /** Stages the new run will not redo. */
  reused: StageName[];
}

export async function planRetry(client: Client, workflowId: string, gpuTaskQueue?: string): Promise<RetryPlan> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const started = events[0]?.workflowExecutionStartedEventAttributes;
  if (!started || started.workflowType?.name !== 'fineTunePipeline') {
    throw new Error(`${workflowId} is not a fineTunePipeline run, so there is nothing to retry`);
  }
  const [config, previous] = decode(started.input?.payloads) as [unknown, PipelineOptions | undefined];
  // The folder the old run wrote to: runs that started after Patches.recordedInput have one of their own.
  const ownFolder = events.some((e) =>
    Object.values(e.markerRecordedEventAttributes?.details ?? {}).some((d) =>
      decode(d.payloads).some((v) => JSON.stringify(v).includes(Patches.recordedInput)),
    ),
  );
  const outputRoot =
    previous?.state?.outputRoot ??
    ((config as { outputUri?: string })?.outputUri ||
      (ownFolder ? runOutputRoot(workflowId, started.firstExecutionRunId ?? '') : `runs/${workflowId}`));
  const completed: PipelineState['completed'] = { ...previous?.state?.completed };

  const scheduled = new Map<string, { stage?: StageName }>();
  for (const event of events) {
    const s = event.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(event.eventId), decode(s.input?.payloads)[0] ?? {});
    const c = event.activityTaskCompletedEventAttributes;
    if (c) {
      const stage = scheduled.get(String(c.scheduledEventId))?.stage;
      if (stage) completed[stage] = decode(c.result?.payloads)[0] as JobResult;
    }
  }
  return {
    config,
    options: { gpuTaskQueue: gpuTaskQueue ?? previous?.gpuTaskQueue, state: { outputRoot, completed } },
    reused: Object.keys(completed) as StageName[],
  };
}

function decode(payloads: temporal.api.common.v1.IPayload[] | null | undefined): unknown[] {
  return (payloads ?? []).map((p) => defaultPayloadConverter.fromPayload(p));
}
