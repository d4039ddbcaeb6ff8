/**
 * The activity plumbing shared by every job RPC (activities/job-runner.ts), in MockActivityEnvironment against
 * a small fake WorkerService on a free port: a test double of the Python worker's protocol that streams
 * scripted JobEvents, so heartbeats, resume hints, cancellation and error mapping are checked exactly.
 */
import {
  Metadata,
  Server,
  ServerCredentials,
  status as GrpcStatus,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
} from '@grpc/grpc-js';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStageActivities, type TrainInput } from '../activities/stages.js';
import {
  ERROR_TYPE_TRAILER,
  MAX_FAILED_ATTEMPTS,
  WAITING_FOR_GPU,
  type JobHeartbeat,
  type JobResult,
} from '../activities/job-runner.js';
import { FailureType } from '../src/config/failure-types.js';
import {
  FailureReason,
  JobEvent,
  JobState,
  type TrainRequest,
  type TrainResponse,
} from '../src/gen/vlmflow/v1/jobs.js';
import { WorkerServiceService, type CancelJobRequest, type CancelJobResponse } from '../src/gen/vlmflow/v1/worker.js';
import { pipelineConfigSchema } from '../src/config/pipeline-config.js';
import { createPythonWorkerClient, type PythonWorkerClient } from '../src/python-worker-client.js';

type Script = (call: ServerWritableStream<TrainRequest, TrainResponse>, fake: FakeWorker) => void | Promise<void>;

/** What the fake worker saw, and how its Train answers (set per test). */
interface FakeWorker {
  script: Script;
  trainRequests: TrainRequest[];
  cancelRequests: CancelJobRequest[];
  /** Resolves the running Train stream's wait-for-cancel, when there is one. */
  onCancel?: () => void;
  streamCancelled: boolean;
}

function event(jobId: string, sequence: number, body: JobEvent['event']): { event: JobEvent } {
  return { event: JobEvent.fromPartial({ jobId, sequence, time: new Date(), event: body }) };
}

const config = pipelineConfigSchema.parse({ dataset: { sources: [{ uri: 'data/x' }] } });
const trainInput = (jobId: string): TrainInput => ({
  jobId,
  stage: 'sft',
  kind: 'sft',
  model: config.model,
  adapterUri: '',
  datasetUri: 'runs/x/prepare/dataset',
  outputUri: 'runs/x/sft',
  maxLength: 512,
  lora: config.sft.lora,
  training: config.sft.training,
  resumeFromCheckpoint: '',
});

describe('runJob (activity plumbing over the job RPCs)', () => {
  let server: Server;
  let client: PythonWorkerClient;
  const fake: FakeWorker = { script: () => undefined, trainRequests: [], cancelRequests: [], streamCancelled: false };

  beforeAll(async () => {
    server = new Server();
    server.addService(WorkerServiceService, {
      train: (call: ServerWritableStream<TrainRequest, TrainResponse>) => {
        fake.trainRequests.push(call.request);
        call.on('cancelled', () => (fake.streamCancelled = true));
        void fake.script(call, fake);
      },
      cancelJob: (call: ServerUnaryCall<CancelJobRequest, CancelJobResponse>, cb: sendUnaryData<CancelJobResponse>) => {
        fake.cancelRequests.push(call.request);
        fake.onCancel?.();
        cb(null, {
          job: {
            jobId: call.request.jobId,
            kind: 2,
            state: JobState.JOB_STATE_CANCELLED,
            createTime: undefined,
            updateTime: undefined,
            step: 20,
            totalSteps: 100,
            lastCheckpointUri: 'runs/x/sft/checkpoint-20',
            completed: undefined,
            failed: undefined,
            watchers: [],
          },
        });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    client = createPythonWorkerClient(`127.0.0.1:${port}`);
  });

  afterAll(() => {
    client?.close();
    server?.forceShutdown();
  });

  function runTrain(env: MockActivityEnvironment, input: TrainInput): Promise<JobResult> {
    const { train } = createStageActivities(client);
    return env.run<[TrainInput], JobResult, typeof train>(train, input);
  }

  function reset(script: Script) {
    Object.assign(fake, { script, trainRequests: [], cancelRequests: [], onCancel: undefined, streamCancelled: false });
  }

  it('relays every job event as a heartbeat carrying step and checkpoint, and returns the completed result', async () => {
    reset((call) => {
      const id = call.request.jobId;
      call.write(
        event(id, 1, {
          $case: 'accepted',
          value: { kind: 2, attached: false, resumedFromStep: 0, resumedFromCheckpointUri: '' },
        }),
      );
      call.write(event(id, 2, { $case: 'progress', value: progress(5, 10, 2.5) }));
      call.write(event(id, 3, { $case: 'checkpointSaved', value: { uri: 'runs/x/sft/checkpoint-5', step: 5 } }));
      call.write(event(id, 4, { $case: 'progress', value: progress(10, 10, 1.25) }));
      call.write(
        event(id, 5, {
          $case: 'completed',
          value: {
            artifacts: { adapter: 'runs/x/sft/adapter' },
            metrics: { train_loss: 1.25 },
            cached: false,
            fingerprint: 'abc',
          },
        }),
      );
      call.end();
    });
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-1', runId: 'run-1' } });
    const beats: JobHeartbeat[] = [];
    env.on('heartbeat', (d: JobHeartbeat) => beats.push(d));
    const result = await runTrain(env, trainInput('wf-1/sft'));

    expect(result).toMatchObject({
      jobId: 'wf-1/sft',
      artifacts: { adapter: 'runs/x/sft/adapter' },
      fingerprint: 'abc',
      lastCheckpoint: 'runs/x/sft/checkpoint-5',
    });
    expect(fake.trainRequests[0]).toMatchObject({
      jobId: 'wf-1/sft',
      outputUri: 'runs/x/sft',
      resumeFromCheckpointUri: '',
    });
    expect(beats.map((b) => [b.step, b.checkpoint])).toEqual(
      expect.arrayContaining([
        [5, ''],
        [5, 'runs/x/sft/checkpoint-5'],
        [10, 'runs/x/sft/checkpoint-5'],
      ]),
    );
    expect(beats.every((b) => b.jobId === 'wf-1/sft')).toBe(true);
  });

  it('passes the last heartbeat checkpoint as a resume hint on retry, under the same job id', async () => {
    reset((call) => {
      call.write(
        event(call.request.jobId, 1, {
          $case: 'accepted',
          value: {
            kind: 2,
            attached: false,
            resumedFromStep: 20,
            resumedFromCheckpointUri: 'runs/x/sft/checkpoint-20',
          },
        }),
      );
      call.write(
        event(call.request.jobId, 2, {
          $case: 'completed',
          value: { artifacts: {}, metrics: {}, cached: false, fingerprint: '' },
        }),
      );
      call.end();
    });
    const hint: JobHeartbeat = {
      stage: 'sft',
      jobId: 'wf-2/sft',
      phase: 'training',
      step: 20,
      totalSteps: 100,
      loss: 1,
      etaSeconds: 9,
      checkpoint: 'runs/x/sft/checkpoint-20',
      attached: false,
      failures: 0,
    };
    const env = new MockActivityEnvironment({
      attempt: 2,
      heartbeatDetails: hint,
      workflowExecution: { workflowId: 'wf-2', runId: 'r' },
    });
    const result = await runTrain(env, trainInput('wf-2/sft'));
    expect(fake.trainRequests[0]).toMatchObject({
      jobId: 'wf-2/sft',
      resumeFromCheckpointUri: 'runs/x/sft/checkpoint-20',
    });
    expect(result.resumedFromStep).toBe(20);
  });

  it('on cancellation, cancels the stream and asks the worker to cancel the job, waiting for it', async () => {
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    reset((call, f) => {
      call.write(event(call.request.jobId, 1, { $case: 'progress', value: progress(20, 100, 2) }));
      f.onCancel = () => call.end();
      started();
    });
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-3', runId: 'r' } });
    const done = runTrain(env, trainInput('wf-3/sft'));
    await running;
    env.cancel('CANCELLED');
    await expect(done).rejects.toBeInstanceOf(CancelledFailure);
    expect(fake.cancelRequests).toEqual([expect.objectContaining({ jobId: 'wf-3/sft', wait: true })]);
    await until(() => fake.streamCancelled);
  });

  it('a run that names its watcher detaches on cancel: the workflow cleanup, not the attempt, stops the job', async () => {
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    reset(() => started());
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-3b', runId: 'r' } });
    const done = runTrain(env, { ...trainInput('wf-3b/r1/sft'), watcher: 'wf-3b/r1' });
    await running;
    expect(fake.trainRequests[0]?.watcher).toBe('wf-3b/r1');
    env.cancel('CANCELLED');
    await expect(done).rejects.toBeInstanceOf(CancelledFailure);
    expect(fake.cancelRequests).toEqual([]);
  });

  it('stopJob: the cleanup of a cancelled stage asks the worker to stop the job for this watcher and waits', async () => {
    reset(() => undefined);
    const { stopJob } = createStageActivities(client);
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-3c', runId: 'r' } });
    const stopped = await env.run(stopJob, { jobId: 'wf-3c/r1/sft', watcher: 'wf-3c/r1', reason: 'cancelled' });
    expect(fake.cancelRequests).toEqual([
      expect.objectContaining({ jobId: 'wf-3c/r1/sft', watcher: 'wf-3c/r1', wait: true, reason: 'cancelled' }),
    ]);
    expect(stopped).toMatchObject({ state: 'JOB_STATE_CANCELLED', lastCheckpoint: 'runs/x/sft/checkpoint-20' });
  });

  it('a busy GPU is a wait: retryable WorkerBusy, phase "waiting for a GPU", not counted as a failure', async () => {
    reset((call) => {
      const trailers = new Metadata();
      trailers.set(ERROR_TYPE_TRAILER, 'WorkerBusy');
      call.emit('error', { code: GrpcStatus.UNAVAILABLE, details: 'busy with: other/sft', metadata: trailers });
    });
    const env = new MockActivityEnvironment({
      attempt: 200,
      heartbeatDetails: { failures: 3 },
      workflowExecution: { workflowId: 'wf-8', runId: 'r' },
    });
    const beats: JobHeartbeat[] = [];
    env.on('heartbeat', (d: JobHeartbeat) => beats.push(d));
    const err = await runTrain(env, trainInput('wf-8/sft')).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: FailureType.WorkerBusy, nonRetryable: false });
    expect(beats.at(-1)).toMatchObject({ phase: WAITING_FOR_GPU, failures: 3 });
  });

  it('counts transient failures in the heartbeat details and gives up after MAX_FAILED_ATTEMPTS in a row', async () => {
    reset((call) => {
      call.emit('error', { code: GrpcStatus.INTERNAL, details: 'boom' });
    });
    const attempt = async (failures: number) => {
      const env = new MockActivityEnvironment({
        heartbeatDetails: { failures },
        workflowExecution: { workflowId: 'wf-9', runId: 'r' },
      });
      const beats: JobHeartbeat[] = [];
      env.on('heartbeat', (d: JobHeartbeat) => beats.push(d));
      const err = await runTrain(env, trainInput('wf-9/sft')).catch((e: unknown) => e);
      return { err, counted: beats.at(-1)?.failures };
    };
    const early = await attempt(0);
    expect(early.err).toMatchObject({ type: FailureType.Internal, nonRetryable: false });
    expect(early.counted).toBe(1);
    const last = await attempt(MAX_FAILED_ATTEMPTS - 1);
    expect(last.err).toMatchObject({ type: FailureType.Internal, nonRetryable: true });
    expect((last.err as Error).message).toContain(`${MAX_FAILED_ATTEMPTS} attempts in a row failed`);
  });

  it('leaves the job running when only the activity attempt ends (TS worker shutdown), so a retry attaches', async () => {
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    reset(() => started());
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-4', runId: 'r' } });
    const done = runTrain(env, trainInput('wf-4/sft'));
    await running;
    env.cancel('WORKER_SHUTDOWN');
    await expect(done).rejects.toBeInstanceOf(CancelledFailure);
    expect(fake.cancelRequests).toEqual([]);
  });

  it.each([
    [GrpcStatus.INVALID_ARGUMENT, 'training.learning_rate must be > 0', FailureType.InvalidArgument, true],
    [GrpcStatus.NOT_FOUND, 'no model at models/nope', FailureType.NotFound, true],
    [GrpcStatus.FAILED_PRECONDITION, '4-bit quantization needs CUDA', FailureType.FailedPrecondition, true],
    [
      GrpcStatus.UNAVAILABLE,
      'this worker runs 1 job(s) at once and is busy with: x',
      FailureType.WorkerUnavailable,
      false,
    ],
    [GrpcStatus.UNAVAILABLE, 'worker restarting', FailureType.WorkerUnavailable, false],
    [GrpcStatus.UNIMPLEMENTED, 'JOB_KIND_TRAIN_DPO jobs are not implemented', FailureType.Unimplemented, true],
    [GrpcStatus.UNAUTHENTICATED, 'missing or wrong token', FailureType.Unauthorized, true],
    [GrpcStatus.PERMISSION_DENIED, 'not allowed', FailureType.Unauthorized, true],
    [GrpcStatus.UNAVAILABLE, 'self-signed certificate in certificate chain', FailureType.Unauthorized, true],
    [GrpcStatus.INTERNAL, 'boom', FailureType.Internal, false],
  ])(
    'maps gRPC status %s to a %s failure (non-retryable: %s) with the worker message',
    async (code, message, type, nonRetryable) => {
      reset((call) => {
        call.emit('error', { code, details: message });
      });
      const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-5', runId: 'r' } });
      const err = await runTrain(env, trainInput('wf-5/sft')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApplicationFailure);
      expect(err).toMatchObject({ type, nonRetryable });
      expect((err as Error).message).toContain(message);
    },
  );

  it('turns an out-of-memory job failure into a typed non-retryable failure with the figures and last checkpoint', async () => {
    reset((call) => {
      call.write(
        event(call.request.jobId, 1, {
          $case: 'checkpointSaved',
          value: { uri: 'runs/x/sft/checkpoint-10', step: 10 },
        }),
      );
      call.write(
        event(call.request.jobId, 2, {
          $case: 'failed',
          value: {
            reason: FailureReason.FAILURE_REASON_OUT_OF_MEMORY,
            message: 'CUDA out of memory at micro-batch 8; halve it',
            detail: 'tried to allocate 2 GiB',
            lastCheckpointUri: '',
          },
        }),
      );
      call.end();
    });
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-6', runId: 'r' } });
    const err = await runTrain(env, trainInput('wf-6/sft')).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: FailureType.OutOfMemory, nonRetryable: true });
    expect((err as Error).message).toContain('halve it');
    expect((err as ApplicationFailure).details?.[0]).toMatchObject({
      reason: 'FAILURE_REASON_OUT_OF_MEMORY',
      lastCheckpointUri: 'runs/x/sft/checkpoint-10',
      detail: 'tried to allocate 2 GiB',
    });
  });

  it('retries (retryable failure) when the stream ends before the job reported an end', async () => {
    reset((call) => {
      call.write(event(call.request.jobId, 1, { $case: 'progress', value: progress(1, 10, 3) }));
      call.end();
    });
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf-7', runId: 'r' } });
    const err = await runTrain(env, trainInput('wf-7/sft')).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: FailureType.JobInterrupted, nonRetryable: false });
  });
});

function progress(step: number, totalSteps: number, loss: number) {
  return {
    phase: 'training',
    step,
    totalSteps,
    epoch: 0,
    loss,
    learningRate: 1e-4,
    gradNorm: 1,
    samplesPerSecond: 1,
    tokensPerSecond: 1,
    peakMemoryBytes: 0,
    metrics: {},
  };
}

async function until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
