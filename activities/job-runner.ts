/**
 * Runs any of the Python worker's server-streaming job RPCs (PrepareDataset, Train, Evaluate, Export) from
 * inside an activity, the same way for all of them:
 *
 * 1. uses the caller's job id (workflow id + stage): a retried or duplicated activity attaches to the running
 *    job instead of starting a second one; after a failure or cancel the worker starts a new attempt of the
 *    same id, which resumes from the newest checkpoint under the same output folder;
 * 2. on retry, passes the last checkpoint seen in the heartbeat details as a resume hint;
 * 3. relays every JobEvent as a heartbeat (`{jobId, step, checkpoint, ...}`) and a pino log line, and keeps
 *    heartbeating while the job is silent so Temporal can deliver a cancellation;
 * 4. on cancellation, cancels the gRPC call, asks the worker to cancel the job and waits until it has ended
 *    (training saves a checkpoint first), then rethrows the CancelledFailure;
 * 5. maps gRPC statuses and typed job failures to ApplicationFailures (see src/config/failure-types.ts).
 */
import { Metadata, status as GrpcStatus, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import {
  FailureReason,
  JobState,
  LogLevel,
  type EvaluateRequest,
  type ExportRequest,
  type JobEvent,
  type JobFailed,
  type PrepareDatasetRequest,
  type TrainRequest,
} from '../src/gen/vlmflow/v1/jobs.js';
import type { CancelJobResponse } from '../src/gen/vlmflow/v1/worker.js';
import { FailureType, type JobFailureDetails } from '../src/config/failure-types.js';
import { logger } from '../src/logger.js';
import type { PythonWorkerClient } from '../src/python-worker-client.js';

/** The job RPCs; each streams `{ event: JobEvent }` messages. */
export type JobMethod = 'prepareDataset' | 'train' | 'evaluate' | 'export';

/** What every heartbeat carries; the next attempt reads it back as a hint. */
export interface JobHeartbeat {
  jobId: string;
  phase: string;
  step: number;
  totalSteps: number;
  loss: number | null;
  /** Seconds to the end of the job at the recent rate; null until it can be estimated. */
  etaSeconds: number | null;
  /** Newest checkpoint the worker reported (empty before the first). */
  checkpoint: string;
  /** True when this attempt joined a job that was already running or finished. */
  attached: boolean;
}

export interface JobResult {
  jobId: string;
  artifacts: Record<string, string>;
  metrics: Record<string, number>;
  /** The worker answered from an earlier identical job (content fingerprint hit). */
  cached: boolean;
  /** The result came from earlier work: a fingerprint hit, or a job (same id) that had already run. */
  reused: boolean;
  fingerprint: string;
  attached: boolean;
  resumedFromStep: number;
  lastCheckpoint: string;
  /** Evaluation results seen during the job (the last 20). */
  evals: { step: number; metrics: Record<string, number> }[];
}

export interface RunJobOptions<Req extends { jobId: string }> {
  method: JobMethod;
  request: Req;
  /** Puts a resume hint into the request (Train); other jobs ignore checkpoints. */
  withResumeHint?: (request: Req, checkpoint: string) => Req;
  /** Called on every event with the current state; `important` for accepted, checkpoints and the end. */
  onUpdate?: (state: JobHeartbeat, important: boolean) => void;
  /** How often to heartbeat while the job is silent. */
  heartbeatIntervalMs?: number;
  /** How long to wait for the worker to confirm a cancellation. */
  cancelTimeoutMs?: number;
}

const RPC_NAMES: Record<JobMethod, string> = {
  prepareDataset: 'PrepareDataset',
  train: 'Train',
  evaluate: 'Evaluate',
  export: 'Export',
};

/** Runs one job to its end inside the current activity; see the file comment. */
export async function runJob<Req extends { jobId: string }>(
  client: PythonWorkerClient,
  opts: RunJobOptions<Req>,
): Promise<JobResult> {
  const ctx = Context.current();
  const { info } = ctx;
  const hint = info.heartbeatDetails as Partial<JobHeartbeat> | undefined;
  // The worker attaches to a running or succeeded job with this id and starts a new attempt of an ended one
  // (resuming from its checkpoints), so a retry never starts a second training on the GPU.
  const jobId = opts.request.jobId;
  let request: Req = { ...opts.request, jobId };
  if (hint?.checkpoint && opts.withResumeHint) request = opts.withResumeHint(request, hint.checkpoint);
  const rpc = RPC_NAMES[opts.method];
  const log = logger.child({
    workflowId: info.workflowExecution?.workflowId,
    runId: info.workflowExecution?.runId,
    activityId: info.activityId,
    activityType: info.activityType,
    attempt: info.attempt,
    jobId,
  });
  log.info({ rpc, resumeHint: hint?.checkpoint || undefined }, 'starting or attaching to job');

  const state: JobHeartbeat = {
    jobId,
    phase: 'starting',
    step: hint?.step ?? 0,
    totalSteps: hint?.totalSteps ?? 0,
    loss: null,
    etaSeconds: null,
    checkpoint: hint?.checkpoint ?? '',
    attached: false,
  };
  const rate = new StepRate();
  const evals: JobResult['evals'] = [];
  let resumedFromStep = 0;
  const beat = (important = false) => {
    ctx.heartbeat({ ...state });
    opts.onUpdate?.({ ...state }, important);
  };

  const call = startStream(client, opts.method, request);
  beat(true);
  const timer = setInterval(() => beat(), opts.heartbeatIntervalMs ?? 2_000);
  try {
    return await new Promise<JobResult>((resolve, reject) => {
      void ctx.cancelled.catch(reject);
      call.on('error', (err: ServiceError) => reject(failureFromStatus(err, rpc, jobId)));
      call.on('end', () =>
        reject(
          ApplicationFailure.retryable(
            `the Python worker closed the ${rpc} stream of job ${jobId} before the job ended`,
            FailureType.JobInterrupted,
          ),
        ),
      );
      call.on('data', (message: { event?: JobEvent }) => {
        const event = message.event?.event;
        if (!event) return;
        switch (event.$case) {
          case 'accepted':
            state.attached = event.value.attached;
            resumedFromStep = event.value.resumedFromStep;
            if (event.value.resumedFromCheckpointUri) state.checkpoint = event.value.resumedFromCheckpointUri;
            state.phase = 'accepted';
            log.info({ attached: state.attached, resumedFromStep }, 'job accepted');
            beat(true);
            break;
          case 'progress': {
            const p = event.value;
            state.phase = p.phase || state.phase;
            state.step = p.step;
            state.totalSteps = p.totalSteps;
            state.loss = p.loss || state.loss;
            state.etaSeconds = rate.eta(p.step, p.totalSteps);
            log.debug({ phase: p.phase, step: p.step, totalSteps: p.totalSteps, loss: p.loss }, 'progress');
            beat();
            break;
          }
          case 'checkpointSaved':
            state.checkpoint = event.value.uri;
            state.step = Math.max(state.step, event.value.step);
            log.info({ checkpoint: event.value.uri, step: event.value.step }, 'checkpoint saved');
            beat(true);
            break;
          case 'log':
            log[logLevel(event.value.level)]({ worker: true }, event.value.message);
            break;
          case 'eval':
            evals.push({ step: event.value.step, metrics: event.value.metrics });
            if (evals.length > 20) evals.shift();
            log.info({ step: event.value.step, metrics: event.value.metrics }, 'evaluation');
            break;
          case 'completed':
            state.phase = 'completed';
            log.info({ cached: event.value.cached, artifacts: event.value.artifacts }, 'job completed');
            beat(true);
            resolve({
              jobId,
              artifacts: event.value.artifacts,
              metrics: event.value.metrics,
              cached: event.value.cached,
              reused: event.value.cached || (state.attached && info.attempt === 1),
              fingerprint: event.value.fingerprint,
              attached: state.attached,
              resumedFromStep,
              lastCheckpoint: state.checkpoint,
              evals,
            });
            break;
          case 'failed':
            log.warn({ reason: FailureReason[event.value.reason], detail: event.value.detail }, event.value.message);
            reject(failureFromJob(event.value, rpc, jobId, state.checkpoint));
            break;
        }
      });
    });
  } catch (err) {
    if (err instanceof CancelledFailure) await stopJob(client, jobId, err, log, opts.cancelTimeoutMs ?? 10 * 60_000);
    throw err;
  } finally {
    clearInterval(timer);
    call.removeAllListeners('data');
    call.on('error', () => undefined); // cancel() below emits CANCELLED; it is ours.
    call.cancel();
  }
}

/**
 * Cancels the job on the worker and waits until it has ended, unless the cancellation only means this
 * activity attempt is over (the TS worker shutting down, a heartbeat timeout): then the job keeps running and
 * the next attempt attaches to it.
 */
async function stopJob(
  client: PythonWorkerClient,
  jobId: string,
  err: CancelledFailure,
  log: typeof logger,
  timeoutMs: number,
): Promise<void> {
  const reason = err.message;
  if (reason !== 'CANCELLED' && reason !== 'NOT_FOUND') {
    log.info({ reason }, 'activity attempt ends; the job keeps running for the next attempt to attach');
    return;
  }
  log.info({ reason }, 'cancelling job and waiting for it to stop');
  try {
    const job = await cancelJob(client, jobId, timeoutMs);
    log.info(
      { state: job.job ? JobState[job.job.state] : undefined, checkpoint: job.job?.lastCheckpointUri },
      'job stopped',
    );
  } catch (cancelErr) {
    // NOT_FOUND: the job never started or the worker forgot it; nothing runs, so nothing to stop.
    log.warn({ err: String(cancelErr) }, 'the worker did not confirm the cancellation');
  }
}

function startStream(
  client: PythonWorkerClient,
  method: JobMethod,
  request: unknown,
): ClientReadableStream<{ event?: JobEvent }> {
  switch (method) {
    case 'prepareDataset':
      return client.prepareDataset(request as PrepareDatasetRequest);
    case 'train':
      return client.train(request as TrainRequest);
    case 'evaluate':
      return client.evaluate(request as EvaluateRequest);
    case 'export':
      return client.export(request as ExportRequest);
  }
}

function cancelJob(client: PythonWorkerClient, jobId: string, timeoutMs: number): Promise<CancelJobResponse> {
  return new Promise((resolve, reject) =>
    client.cancelJob(
      { jobId, wait: true, reason: 'cancelled through Temporal' },
      new Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, res) => (err ? reject(err) : resolve(res)),
    ),
  );
}

/** gRPC status of a failed call → ApplicationFailure; the worker's message is kept as is. */
export function failureFromStatus(err: ServiceError, rpc: string, jobId: string): ApplicationFailure {
  const message = `${rpc} failed: ${err.details || err.message}`;
  const details: JobFailureDetails = {
    jobId,
    reason: GrpcStatus[err.code] ?? String(err.code),
    detail: '',
    lastCheckpointUri: '',
  };
  const nonRetryable = (type: string) =>
    ApplicationFailure.create({ message, type, nonRetryable: true, details: [details] });
  const retryable = (type: string) =>
    ApplicationFailure.create({ message, type, nonRetryable: false, details: [details] });
  switch (err.code) {
    case GrpcStatus.INVALID_ARGUMENT:
      return nonRetryable(FailureType.InvalidArgument);
    case GrpcStatus.NOT_FOUND:
      return nonRetryable(FailureType.NotFound);
    case GrpcStatus.FAILED_PRECONDITION:
      return nonRetryable(FailureType.FailedPrecondition);
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return nonRetryable(FailureType.OutOfMemory);
    case GrpcStatus.UNIMPLEMENTED:
      return ApplicationFailure.create({
        message: `the Python worker does not implement ${rpc} yet (${err.details})`,
        type: FailureType.Unimplemented,
        nonRetryable: true,
        details: [details],
      });
    // UNAVAILABLE: restarting, unreachable, or every job slot taken (the worker's WorkerBusy).
    case GrpcStatus.UNAVAILABLE:
    case GrpcStatus.DEADLINE_EXCEEDED:
      return retryable(FailureType.WorkerUnavailable);
    case GrpcStatus.CANCELLED:
    case GrpcStatus.ABORTED:
      return retryable(FailureType.JobInterrupted);
    default:
      return retryable(FailureType.Internal);
  }
}

/** A JobFailed event → ApplicationFailure typed by its FailureReason. */
export function failureFromJob(failed: JobFailed, rpc: string, jobId: string, checkpoint: string): ApplicationFailure {
  const details: JobFailureDetails = {
    jobId,
    reason: FailureReason[failed.reason] ?? String(failed.reason),
    detail: failed.detail,
    lastCheckpointUri: failed.lastCheckpointUri || checkpoint,
  };
  const types: Partial<Record<FailureReason, [string, boolean]>> = {
    [FailureReason.FAILURE_REASON_INVALID_ARGUMENT]: [FailureType.InvalidArgument, true],
    [FailureReason.FAILURE_REASON_BAD_DATA]: [FailureType.BadData, true],
    [FailureReason.FAILURE_REASON_NOT_FOUND]: [FailureType.NotFound, true],
    [FailureReason.FAILURE_REASON_FAILED_PRECONDITION]: [FailureType.FailedPrecondition, true],
    [FailureReason.FAILURE_REASON_OUT_OF_MEMORY]: [FailureType.OutOfMemory, true],
    [FailureReason.FAILURE_REASON_STORAGE]: [FailureType.Storage, true],
    // Cancelled without our asking (worker shutdown): the next attempt resumes from the checkpoint.
    [FailureReason.FAILURE_REASON_CANCELLED]: [FailureType.JobInterrupted, false],
  };
  const [type, nonRetryable] = types[failed.reason] ?? [FailureType.Internal, false];
  return ApplicationFailure.create({
    message: `${rpc} job ${jobId} failed: ${failed.message || 'no message from the worker'}`,
    type,
    nonRetryable,
    details: [details],
  });
}

function logLevel(level: LogLevel): 'debug' | 'info' | 'warn' | 'error' {
  switch (level) {
    case LogLevel.LOG_LEVEL_DEBUG:
      return 'debug';
    case LogLevel.LOG_LEVEL_WARNING:
      return 'warn';
    case LogLevel.LOG_LEVEL_ERROR:
      return 'error';
    default:
      return 'info';
  }
}

/** Steps per second over this attempt, for an ETA; null until two distinct steps were seen. */
class StepRate {
  private first: { step: number; at: number } | undefined;

  eta(step: number, total: number): number | null {
    const now = Date.now();
    if (!this.first || step < this.first.step) this.first = { step, at: now };
    const steps = step - this.first.step;
    const seconds = (now - this.first.at) / 1000;
    if (total <= 0 || steps <= 0 || seconds <= 0) return null;
    return Math.max(0, Math.round(((total - step) * seconds) / steps));
  }
}
