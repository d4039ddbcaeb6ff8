/**
 * fineTunePipeline: prepare → SFT → (preference prep → DPO) → evaluate base vs tuned → gate → export, each
 * stage one activity on the GPU task queue.
 *
 * - The raw input is parsed with zod first: JSON typed into the Temporal UI either runs or fails at once,
 *   non-retryably, listing every bad field and the accepted values.
 * - `pause` cancels the running stage (the worker checkpoints) and waits for `resume`; the stage then starts
 *   again under a new job id and the worker resumes from the newest checkpoint in the same output folder.
 * - Cancelling the workflow cancels the running stage the same way (checkpoint kept) and ends as cancelled.
 * - Progress: a `progress` query, current details for the UI, search attributes VlmflowModel / Dataset /
 *   Stage / Status.
 * - Between stages, when Temporal suggests it, the workflow continues as new carrying the finished stages.
 */
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  ContinueAsNew,
  continueAsNew,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities, JobResult } from '../activities/index.js';
import { FailureType } from '../src/config/failure-types.js';
import { pipelineConfigSchema, type PipelineConfig, type TrainingConfig } from '../src/config/pipeline-config.js';
import { VlmflowDataset, VlmflowModel, VlmflowStage, VlmflowStatus } from '../src/config/search-attributes.js';
import { GPU_TASK_QUEUE } from '../src/config/task-queues.js';
import {
  pauseSignal,
  progressQuery,
  resumeSignal,
  stageProgressSignal,
  type PipelineProgress,
  type StageName,
  type StageSummary,
} from './definitions.js';
import { compareMetric, type GateResult } from './gate.js';
import { parseInputOrFail } from './parse-input.js';
import { stageKey } from './stage-key.js';

/** Finished stages, carried over continue-as-new and into `vlmflow retry`. */
export interface PipelineState {
  outputRoot: string;
  completed: Partial<Record<StageName, JobResult>>;
}

export interface PipelineOptions {
  /** GPU activity task queue; default 'vlmflow-gpu'. */
  gpuTaskQueue?: string;
  /** Stages already done (continue-as-new, retry): they are not run again. */
  state?: PipelineState;
  /**
   * Milliseconds a stage may go without a heartbeat before Temporal gives its attempt to another worker; default
   * 3 minutes. The fault tests (test/faults.test.ts) shorten it so a SIGKILLed TS worker is noticed in seconds.
   */
  heartbeatTimeoutMs?: number;
}

export interface PipelineResult {
  status: 'completed' | 'gate-flagged';
  stages: StageSummary[];
  /** The HTML report of the evaluation (base vs tuned). */
  reportUri: string;
  adapterUri: string;
  /** The merged model folder, when exported. */
  modelUri: string;
  metrics: Record<string, number>;
  gate: GateResult | null;
}

export async function fineTunePipeline(rawConfig: unknown, options: PipelineOptions = {}): Promise<PipelineResult> {
  const config: PipelineConfig = parseInputOrFail(pipelineConfigSchema, rawConfig, 'pipeline config');
  const workflowId = workflowInfo().workflowId;
  const state: PipelineState = options.state ?? { outputRoot: config.outputUri || `runs/${workflowId}`, completed: {} };
  const root = state.outputRoot;

  const acts = proxyActivities<Activities>({
    taskQueue: options.gpuTaskQueue ?? GPU_TASK_QUEUE,
    // Hours-long training: no short start-to-close; a dead worker is noticed through heartbeats instead.
    startToCloseTimeout: '7 days',
    heartbeatTimeout: options.heartbeatTimeoutMs ?? '3 minutes',
    // Cancel waits until the worker confirms the job stopped (checkpoint saved, GPU freed).
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: { initialInterval: '5s', backoffCoefficient: 2, maximumInterval: '2 minutes', maximumAttempts: 20 },
  });

  // ---- progress, pause and resume -------------------------------------------------------------------
  const stageOrder: StageName[] = [
    'prepare',
    'sft',
    ...(config.dpo ? (['prepare-preference', 'dpo'] as const) : []),
    'evaluate',
    ...(config.gate ? (['gate'] as const) : []),
    ...(config.export.enabled ? (['export'] as const) : []),
  ];
  const progress: PipelineProgress = {
    status: 'running',
    stage: null,
    stages: stageOrder.map((name) => summaryOf(name, state.completed[name])),
    step: 0,
    totalSteps: 0,
    loss: null,
    etaSeconds: null,
    lastCheckpoint: '',
    outputRoot: root,
    details: '',
  };
  let paused = false;
  let stageScope: CancellationScope | undefined;
  setHandler(progressQuery, () => progress);
  setHandler(pauseSignal, (reason?: string) => {
    if (paused || progress.status !== 'running') return;
    paused = true;
    log.info('pause requested', { reason });
    stageScope?.cancel();
    refresh();
  });
  setHandler(resumeSignal, () => {
    if (!paused) return;
    paused = false;
    log.info('resume requested');
    refresh();
  });
  setHandler(stageProgressSignal, (p) => {
    if (p.stage !== progress.stage) return;
    progress.step = p.step;
    progress.totalSteps = p.totalSteps;
    progress.loss = p.loss;
    progress.etaSeconds = p.etaSeconds;
    if (p.checkpoint) progress.lastCheckpoint = p.checkpoint;
    const summary = stageSummary(p.stage);
    if (summary) summary.jobId = p.jobId;
    refresh(p.phase);
  });

  function stageSummary(name: string): StageSummary | undefined {
    return progress.stages.find((s) => s.name === name);
  }

  function refresh(phase = '') {
    const stage = progress.stage;
    const lines = [
      `**${paused ? 'paused' : progress.status}**${stage ? ` — stage ${stage}` : ''}${phase ? ` (${phase})` : ''}`,
    ];
    if (progress.totalSteps > 0) lines.push(`step ${progress.step}/${progress.totalSteps}`);
    if (progress.loss !== null) lines.push(`loss ${progress.loss.toFixed(4)}`);
    if (progress.etaSeconds !== null) lines.push(`ETA ${formatSeconds(progress.etaSeconds)}`);
    if (progress.lastCheckpoint) lines.push(`checkpoint ${progress.lastCheckpoint}`);
    progress.details = lines.join(' · ');
    setCurrentDetails(
      [
        progress.details,
        '',
        ...progress.stages.map((s) => `- ${s.name}: ${s.status}${s.message ? ` — ${s.message}` : ''}`),
      ].join('\n'),
    );
  }

  function setStatus(status: PipelineProgress['status']) {
    progress.status = status;
    upsertSearchAttributes([{ key: VlmflowStatus, value: status }]);
    refresh();
  }

  upsertSearchAttributes([
    { key: VlmflowModel, value: config.model.id },
    { key: VlmflowDataset, value: config.dataset.sources.map((s) => s.uri).join(',') },
    { key: VlmflowStatus, value: 'running' },
  ]);

  /**
   * Runs one stage (or reuses it from the carried-over state), restarting it after each pause. `fn` gets the
   * job id and output folder (from the content key when there is one, else workflow id + stage) and the newest
   * checkpoint seen.
   */
  async function stage(
    name: StageName,
    key: string | null,
    fn: (jobId: string, outputUri: string, checkpoint: string) => Promise<JobResult>,
  ): Promise<JobResult> {
    const summary = stageSummary(name)!;
    const done = state.completed[name];
    if (done) return done;
    if (workflowInfo().continueAsNewSuggested) {
      log.info('history is long; continuing as new', { nextStage: name });
      await continueAsNew<typeof fineTunePipeline>(rawConfig, { ...options, state });
    }
    progress.stage = name;
    Object.assign(progress, { step: 0, totalSteps: 0, loss: null, etaSeconds: null });
    upsertSearchAttributes([{ key: VlmflowStage, value: name }]);
    for (;;) {
      if (paused) {
        summary.status = 'paused';
        setStatus('paused');
        await condition(() => !paused);
        setStatus('running');
      }
      summary.status = 'running';
      // The same id after a pause: the worker starts a new attempt that resumes from the stage's checkpoints.
      // A keyed stage's job is named by its content key, so an identical earlier run's result is attached to.
      summary.jobId = key ? `stages/${key}` : `${workflowId}/${name}`;
      const outputUri = key ? `stages/${key}` : `${root}/${name}`;
      refresh();
      stageScope = new CancellationScope();
      try {
        const ran = await stageScope.run(() => fn(summary.jobId!, outputUri, progress.lastCheckpoint));
        const result = { ...ran, fingerprint: ran.fingerprint || key || '' };
        Object.assign(summary, summaryOf(name, result));
        state.completed[name] = result;
        refresh();
        return result;
      } catch (err) {
        if (isCancellation(err) && paused && !CancellationScope.current().consideredCancelled) {
          log.info('stage stopped for pause', { stage: name });
          continue;
        }
        summary.status = isCancellation(err) ? 'cancelled' : 'failed';
        summary.message = failureMessage(err);
        throw err;
      } finally {
        stageScope = undefined;
      }
    }
  }

  /** A stage's content key when reuse is on (see stage-key.ts); null runs it under this run's own folder. */
  function keyFor(name: StageName, inputs: Record<string, unknown>, fingerprints: string[]): string | null {
    return config.reuse ? stageKey(name, { model: config.model, ...inputs }, fingerprints) : null;
  }

  /** SFT or DPO; after an out-of-memory failure, once more with half the micro-batch (same effective batch). */
  async function train(name: 'sft' | 'dpo', dataset: JobResult, adapter: JobResult | null): Promise<JobResult> {
    const spec = name === 'sft' ? config.sft : config.dpo!;
    const dpo = name === 'dpo' ? pick(config.dpo!) : undefined;
    let training: TrainingConfig = spec.training;
    for (;;) {
      const { retryOnOutOfMemory: _ignored, ...settings } = training;
      const key = keyFor(name, { lora: spec.lora, training: settings, dpo, maxLength: config.dataset.maxLength }, [
        dataset.fingerprint,
        ...(adapter ? [adapter.fingerprint] : []),
      ]);
      try {
        return await stage(name, key, (jobId, outputUri, checkpoint) =>
          acts.train({
            jobId,
            stage: name,
            kind: name,
            model: config.model,
            adapterUri: adapter ? adapterOf(adapter) : '',
            datasetUri: datasetOf(dataset),
            maxLength: config.dataset.maxLength,
            lora: spec.lora,
            training,
            dpo,
            outputUri: key
              ? outputUri
              : `${outputUri}${training === spec.training ? '' : `-mb${training.microBatchSize}`}`,
            resumeFromCheckpoint: checkpoint,
          }),
        );
      } catch (err) {
        const oom = failureType(err) === FailureType.OutOfMemory;
        if (!oom || !training.retryOnOutOfMemory || training.microBatchSize < 2) throw err;
        training = {
          ...training,
          microBatchSize: Math.floor(training.microBatchSize / 2),
          gradientAccumulationSteps: training.gradientAccumulationSteps * 2,
          retryOnOutOfMemory: false,
        };
        log.warn('out of memory; retrying with half the micro-batch', {
          stage: name,
          microBatchSize: training.microBatchSize,
        });
        stageSummary(name)!.message = `out of memory; retrying with micro-batch ${training.microBatchSize}`;
        progress.lastCheckpoint = '';
      }
    }
  }

  /** Dataset prep; with reuse on, into the shared `datasets` folder where the worker caches by content. */
  function prepare(name: 'prepare' | 'prepare-preference', dataset: PipelineConfig['dataset']): Promise<JobResult> {
    return stage(name, null, (jobId, outputUri) =>
      acts.prepareDataset({
        jobId,
        stage: name,
        model: config.model,
        dataset,
        outputUri: config.reuse ? 'datasets' : outputUri,
      }),
    );
  }

  try {
    const prepared = await prepare('prepare', config.dataset);
    const sft = await train('sft', prepared, null);
    let tuned = { name: 'sft', result: sft };
    let evalDataset = prepared;

    if (config.dpo) {
      const preference = await prepare('prepare-preference', config.dpo.dataset);
      tuned = { name: 'dpo', result: await train('dpo', preference, sft) };
      if (config.evaluate.on === 'preference') evalDataset = preference;
    }

    const variants = [
      { name: 'base', adapterUri: '', trainingLogUri: '' },
      { name: 'sft', adapterUri: adapterOf(sft), trainingLogUri: sft.artifacts.training_log ?? '' },
    ];
    if (tuned.name === 'dpo') {
      variants.push({
        name: 'dpo',
        adapterUri: adapterOf(tuned.result),
        trainingLogUri: tuned.result.artifacts.training_log ?? '',
      });
    }
    const evalKey = keyFor('evaluate', { evaluate: config.evaluate, variants: variants.map((v) => v.name) }, [
      evalDataset.fingerprint,
      sft.fingerprint,
      ...(tuned.name === 'dpo' ? [tuned.result.fingerprint] : []),
    ]);
    const evaluation = await stage('evaluate', evalKey, (jobId, outputUri) =>
      acts.evaluate({
        jobId,
        stage: 'evaluate',
        model: config.model,
        variants,
        datasetUri: datasetOf(evalDataset),
        evaluate: config.evaluate,
        outputUri,
      }),
    );

    let gate: GateResult | null = null;
    if (config.gate) {
      progress.stage = 'gate';
      gate = compareMetric(evaluation.metrics, config.gate, tuned.name);
      const summary = stageSummary('gate')!;
      summary.status = gate.passed ? 'completed' : 'failed';
      summary.message = gate.message;
      refresh();
      if (!gate.passed && config.gate.onFail === 'fail') {
        throw ApplicationFailure.create({
          type: FailureType.GateFailed,
          message: gate.message,
          nonRetryable: true,
          details: [gate],
        });
      }
    }

    let modelUri = '';
    if (config.export.enabled) {
      // Pushing to a hub is a side effect to repeat, so only a local export is reused.
      const exportKey = config.export.pushToHub ? null : keyFor('export', {}, [tuned.result.fingerprint]);
      const exported = await stage('export', exportKey, (jobId, outputUri) =>
        acts.exportModel({
          jobId,
          stage: 'export',
          model: config.model,
          adapterUri: adapterOf(tuned.result),
          outputUri,
          pushToHub: config.export.pushToHub,
          privateRepo: config.export.privateRepo,
          card: {
            workflow_id: workflowId,
            data_fingerprint: prepared.fingerprint,
            ...(evaluation.artifacts.metrics ? { eval_metrics_uri: evaluation.artifacts.metrics } : {}),
          },
        }),
      );
      modelUri = exported.artifacts.model ?? '';
    }

    progress.stage = null;
    setStatus('completed');
    upsertSearchAttributes([{ key: VlmflowStage, value: 'done' }]);
    return {
      status: gate && !gate.passed ? 'gate-flagged' : 'completed',
      stages: progress.stages,
      reportUri: evaluation.artifacts.report ?? '',
      adapterUri: adapterOf(tuned.result),
      modelUri,
      metrics: evaluation.metrics,
      gate,
    };
  } catch (err) {
    if (!(err instanceof ContinueAsNew)) setStatus(isCancellation(err) ? 'cancelled' : 'failed');
    throw err;
  }
}

function adapterOf(result: JobResult): string {
  return result.artifacts.adapter ?? '';
}

function datasetOf(result: JobResult): string {
  return result.artifacts.dataset ?? '';
}

function pick(dpo: NonNullable<PipelineConfig['dpo']>) {
  return {
    beta: dpo.beta,
    lossType: dpo.lossType,
    maxPromptLength: dpo.maxPromptLength,
    maxCompletionLength: dpo.maxCompletionLength,
  };
}

function summaryOf(name: StageName, result: JobResult | undefined): StageSummary {
  if (!result) return { name, status: 'pending' };
  return {
    name,
    status: result.reused ? 'reused' : 'completed',
    jobId: result.jobId,
    artifacts: result.artifacts,
    metrics: result.metrics,
    fingerprint: result.fingerprint,
    resumedFromStep: result.resumedFromStep,
  };
}

/** The ApplicationFailure type behind an ActivityFailure, if any. */
export function failureType(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

function failureMessage(err: unknown): string {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof Error ? cause.message : String(err);
}

function formatSeconds(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}
