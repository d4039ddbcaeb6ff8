/**
 * A fineTunePipeline's progress as a person wants it: the `progress` query (stages, status) with the running
 * stage's live numbers merged in from its activity's heartbeat details (step, loss, ETA, checkpoint, phase), read
 * through describe's pending activities. Progress costs the run no history; this is where it is put together for
 * the CLI and the tests. The Temporal UI shows the same details under "Pending Activities".
 */
import type { WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import proto from '@temporalio/proto'; // CommonJS: a default import under Node's ESM loader
import { WAITING_FOR_GPU, type JobHeartbeat } from '../activities/job-runner.js';
import { progressQuery, type PipelineProgress } from '../workflows/definitions.js';

const SCHEDULED = proto.temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED;

export async function readPipelineProgress(handle: WorkflowHandle): Promise<PipelineProgress> {
  const [progress, description] = await Promise.all([handle.query(progressQuery), handle.describe()]);
  const running = progress.stages.find((s) => s.name === progress.stage);
  const pending = description.raw.pendingActivities ?? [];
  for (const activity of pending) {
    const payload = activity.heartbeatDetails?.payloads?.[0];
    if (!payload) continue;
    const beat = defaultPayloadConverter.fromPayload<Partial<JobHeartbeat>>(payload);
    // Runs that started before heartbeats named their stage are matched by job id.
    if (beat.stage !== progress.stage && (!beat.jobId || beat.jobId !== running?.jobId)) continue;
    return {
      ...progress,
      step: beat.step ?? progress.step,
      totalSteps: beat.totalSteps ?? progress.totalSteps,
      loss: beat.loss ?? progress.loss,
      etaSeconds: beat.etaSeconds ?? progress.etaSeconds,
      lastCheckpoint: beat.checkpoint || progress.lastCheckpoint,
      phase: beat.phase,
    };
  }
  // Scheduled and not started: every GPU worker's slots are taken, so the stage waits in the task queue.
  const queued = pending.some((a) => a.state === SCHEDULED);
  return progress.stage && progress.status === 'running' && queued ? { ...progress, phase: WAITING_FOR_GPU } : progress;
}
