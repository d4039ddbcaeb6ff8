/**
 * Runs any of the Python worker's server-streaming job RPCs (PrepareDataset, Train, Evaluate, Export) from
 * inside an activity, the same way for all of them:
 *
 * 1. uses the caller's job id (one run and stage, or a content key): a retried or duplicated activity attaches to
 *    the running job instead of starting a second one; after a failure or cancel the worker starts a new attempt
 *    of the same id, which resumes from the newest checkpoint under the same output folder;
 * 2. on retry, passes the last checkpoint seen in the heartbeat details as a resume hint;
 * 3. relays every JobEvent as a heartbeat (`{stage, jobId, step, loss, checkpoint, ...}`): the run's live progress,
 *    read by the CLI and shown by the Temporal UI without a single history event; keeps heartbeating while the
 *    job is silent so Temporal can deliver a cancellation;
 * 4. a busy GPU is a wait, not a failure: the attempt ends `WorkerBusy` with phase "waiting for a GPU" and Temporal
 *    tries again (the stage's retry policy has no attempt limit); other transient failures count in the heartbeat
 *    details, and the MAX_FAILED_ATTEMPTS-th in a row ends the stage;
 * 5. on cancellation: a run that names its `watcher` detaches, and the workflow's cleanup activity (`stopJob`) stops
 *    the job, even when this attempt is gone; older runs' attempts stop the job themselves and wait for its end;
 * 6. maps gRPC statuses and typed job failures to ApplicationFailures (see src/config/failure-types.ts).
 */
import { Metadata, status as GrpcStatus, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { ApplicationFailureCategory } from '@temporalio/common';
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
import type { CancelJobRequest, CancelJobResponse } from '../src/gen/vlmflow/v1/worker.js';
import { FailureType, type JobFailureDetails } from '../src/config/failure-types.js';
import { logger } from '../src/logger.js';
import type { PythonWorkerClient } from '../src/python-worker-client.js';

/** The job RPCs; each streams `{ event: JobEvent }` messages. */
export type JobMethod = 'prepareDataset' | 'train' | 'evaluate' | 'export';

/** Transient failures in a row (busy GPU and lost workers not counted) after which a stage fails. */
export const MAX_FAILED_ATTEMPTS = 20;

/** The phase a stage shows while its attempt waits for a GPU held by other work. */
export const WAITING_FOR_GPU = 'waiting for a GPU';

/** What every heartbeat carries: the stage's live progress, and for the next attempt a hint. */
export interface JobHeartbeat {
  /** The pipeline stage (prepare, sft, ...), so a reader of pending activities knows what it shows. */
  stage: string;
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
  /** Attempts in a row that failed transiently (see MAX_FAILED_ATTEMPTS). */
  failures: number;
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

export interface RunJobOptions<Req extends { jobId: string; watcher: string }> {
  method: JobMethod;
  request: Req;
  /** The pipeline stage, shown with the progress. */
  stage: string;
  /** Puts a resume hint into the request (Train); other jobs ignore checkpoints. */
  withResumeHint?: (request: Req, checkpoint: string) => Req;
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
export async function runJob<Req extends { jobId: string; watcher: string }>(
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
    stage: opts.stage,
    jobId,
    phase: 'starting',
    step: hint?.step ?? 0,
    totalSteps: hint?.totalSteps ?? 0,
    loss: null,
    etaSeconds: null,
    checkpoint: hint?.checkpoint ?? '',
    attached: false,
    failures: hint?.failures ?? 0,
  };
  const rate = new StepRate();
  const evals: JobResult['evals'] = [];
  let resumedFromStep = 0;
  const beat = () => ctx.heartbeat({ ...state });

  const call = startStream(client, opts.method, request);
  beat();
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
            state.failures = 0; // the worker took the job: earlier failures are behind it
            log.info({ attached: state.attached, resumedFromStep }, 'job accepted');
            beat();
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
            beat();
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
            beat();
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
    if (err instanceof CancelledFailure) {
      if (request.watcher) await leaveJob(client, request.watcher, jobId, err, log);
      else await stopJob(client, jobId, err, log, opts.cancelTimeoutMs ?? 10 * 60_000);
      throw err;
    }
    throw countFailure(err, state, log);
  } finally {
    clearInterval(timer);
    call.removeAllListeners('data');
    call.on('error', () => undefined); // cancel() below emits CANCELLED; it is ours.
    call.cancel();
  }
}

/**
 * A failed attempt, as Temporal should see it: a busy GPU is a wait (phase "waiting for a GPU", not counted); any
 * other retryable failure counts in the heartbeat details that the next attempt reads, and the
 * MAX_FAILED_ATTEMPTS-th in a row is final.
 */
function countFailure(err: unknown, state: JobHeartbeat, log: typeof logger): unknown {
  if (!(err instanceof ApplicationFailure) || err.nonRetryable) return err;
  const ctx = Context.current();
  if (err.type === FailureType.WorkerBusy) {
    state.phase = WAITING_FOR_GPU;
    ctx.heartbeat({ ...state });
    log.info({ attempt: ctx.info.attempt }, 'waiting for a GPU: every job slot of the worker is taken');
    return err;
  }
  state.failures += 1;
  ctx.heartbeat({ ...state });
  if (state.failures < MAX_FAILED_ATTEMPTS) return err;
  return ApplicationFailure.create({
    type: err.type ?? FailureType.Internal,
    message: `${err.message} (${state.failures} attempts in a row failed; giving up)`,
    nonRetryable: true,
    details: err.details ?? [],
  });
}

/**
 * A run that names its watcher detaches when its attempt is cancelled: the workflow's `stopJob` cleanup stops the
 * job, so that also works when no attempt is alive. NOT_FOUND means the run this attempt served is gone: a run
 * that continued as new attaches again (the job runs on); a run that ended without its cleanup (terminated, timed
 * out) will not come back, so its watch ends here and the job stops unless another run waits for it.
 */
async function leaveJob(
  client: PythonWorkerClient,
  watcher: string,
  jobId: string,
  err: CancelledFailure,
  log: typeof logger,
): Promise<void> {
  const reason = err.message;
  if (reason !== 'NOT_FOUND') {
    log.info({ reason }, 'activity attempt ends; the job keeps running');
    return;
  }
  const ctx = Context.current();
  const workflowId = ctx.info.workflowExecution?.workflowId;
  let status: string | undefined;
  try {
    status = workflowId ? (await ctx.client.workflow.getHandle(workflowId).describe()).status.name : undefined;
  } catch (describeErr) {
    log.warn({ err: String(describeErr) }, 'could not look up the run this attempt served; the job keeps running');
    return;
  }
  if (status === 'RUNNING' || status === 'CONTINUED_AS_NEW' || status === 'COMPLETED') {
    log.info({ status }, 'the run moved on (continued as new, or done); the job keeps running for it');
    return;
  }
  log.warn({ status }, 'the run ended without stopping its job; leaving it (it stops unless another run waits)');
  try {
    await cancelJob(client, { jobId, watcher, wait: false, reason: `run ${watcher} ended ${status ?? ''}` });
  } catch (cancelErr) {
    log.warn({ err: String(cancelErr) }, 'the worker did not take the cancellation');
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
    const job = await cancelJob(
      client,
      { jobId, watcher: '', wait: true, reason: 'cancelled through Temporal' },
      timeoutMs,
    );
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

export function cancelJob(
  client: PythonWorkerClient,
  request: CancelJobRequest,
  timeoutMs = 60_000,
): Promise<CancelJobResponse> {
  return new Promise((resolve, reject) =>
    client.cancelJob(request, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(err) : resolve(res),
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
    case GrpcStatus.UNAUTHENTICATED:
    case GrpcStatus.PERMISSION_DENIED:
      return ApplicationFailure.create({
        message:
          `${rpc} was refused by the Python worker (${GrpcStatus[err.code]}: ${err.details}): the TS worker's ` +
          'VLMFLOW_WORKER_TOKEN (or VLMFLOW_WORKER_TOKEN_FILE) and client certificate must be those the Python ' +
          'worker accepts; fix them and retry the run',
        type: FailureType.Unauthorized,
        nonRetryable: true,
        details: [details],
      });
    // UNAVAILABLE: every job slot taken (the worker's WorkerBusy, a wait), or restarting / unreachable.
    case GrpcStatus.UNAVAILABLE:
      if (errorTypeOf(err) === 'WorkerBusy') {
        // A wait, not an error: BENIGN keeps each attempt out of the SDK's warnings and failure metrics.
        return ApplicationFailure.create({
          message,
          type: FailureType.WorkerBusy,
          nonRetryable: false,
          details: [details],
          category: ApplicationFailureCategory.BENIGN,
        });
      }
      if (isTlsFailure(err)) {
        return ApplicationFailure.create({
          message:
            `${rpc} could not reach the Python worker over TLS (${err.details}): VLMFLOW_WORKER_TLS_CA must hold ` +
            'the CA that signed the worker certificate, and VLMFLOW_WORKER_TLS_SERVER_NAME the name in it; fix ' +
            'them and retry the run',
          type: FailureType.Unauthorized,
          nonRetryable: true,
          details: [details],
        });
      }
      return retryable(FailureType.WorkerUnavailable);
    case GrpcStatus.DEADLINE_EXCEEDED:
      return retryable(FailureType.WorkerUnavailable);
    case GrpcStatus.CANCELLED:
    case GrpcStatus.ABORTED:
      return retryable(FailureType.JobInterrupted);
    default:
      return retryable(FailureType.Internal);
  }
}

/** The worker's typed error (`vlmflow-error-type` trailer, set by the Python worker's abort_with), if any. */
function errorTypeOf(err: ServiceError): string | undefined {
  const value = err.metadata?.get(ERROR_TYPE_TRAILER)[0];
  return typeof value === 'string' ? value : undefined;
}

/** The Python worker's trailer naming its error class (WorkerBusy, ...): statuses alone are ambiguous. */
export const ERROR_TYPE_TRAILER = 'vlmflow-error-type';

/** A TLS handshake that failed on trust or names: no retry can fix it. */
function isTlsFailure(err: ServiceError): boolean {
  return /certificate|self[- ]signed|unable to verify|handshake|SSL|hostname\/IP does not match/i.test(err.details);
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
    // Silent past the worker's limit, stopped: the next attempt resumes from the checkpoint.
    [FailureReason.FAILURE_REASON_STUCK]: [FailureType.JobStuck, false],
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
