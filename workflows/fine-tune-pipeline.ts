/**
 * fineTunePipeline: prepare → SFT → (preference prep → DPO) → (GRPO prompt prep → GRPO) → evaluate base vs tuned →
 * gate → export, each stage one activity on the GPU task queue.
 *
 * - The raw input is parsed with zod first, in a local activity whose result history records: JSON typed into the
 *   Temporal UI either runs or fails at once, non-retryably, listing every bad field; a later schema change never
 *   reaches a run in flight. Continue-as-new carries the parsed config.
 * - History grows with work, not time: live progress (step, loss, ETA, checkpoint) is in the stage activity's
 *   heartbeat details; the `progress` query and current details carry stages and status. A running stage wakes
 *   the workflow once per `historyCheckIntervalMs` (default an hour) to continue as new when Temporal suggests it;
 *   the job runs on and the next run attaches to it by job id.
 * - A busy GPU is waited for (the stage shows "waiting for a GPU"), never a failure.
 * - `pause` and cancel stop the stage: its activity is cancelled, and a cleanup activity (`stopJob`) has the worker
 *   checkpoint and stop the job even when no attempt is alive. A job another run shares (a reused stage) stops
 *   only when its last run lets go. After `resume` the stage starts again under the same job id and resumes from
 *   its newest checkpoint. Pause survives continue-as-new.
 * - Job ids and output folders belong to one run (workflow id + first run id), unless a content key says the work
 *   is identical (stage reuse).
 * - Search attributes VlmflowModel / Dataset / Stage / Status; a config that fails to parse sets VlmflowStatus
 *   `invalid-config`, so the list shows it without opening the run.
 * - The Temporal UI tells the story (run-story.ts): current details open with the run's summary and end in its final
 *   state; each stage's activity and timer has a summary naming it.
 *
 * Runs that started before Patches.recordedInput or Patches.uiStory keep their old behaviour to the end
 * (see patches.ts).
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
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities, JobResult } from '../activities/index.js';
import type { GrpoSettings } from '../activities/stages.js';
import { FailureType } from '../src/config/failure-types.js';
import { pipelineConfigSchema, type PipelineConfig, type TrainingConfig } from '../src/config/pipeline-config.js';
import { VlmflowDataset, VlmflowModel, VlmflowStage, VlmflowStatus } from '../src/config/search-attributes.js';
import { GPU_TASK_QUEUE } from '../src/config/task-queues.js';
import {
  pauseSignal,
  progressQuery,
  resumeSignal,
  type PipelineProgress,
  type StageName,
  type StageSummary,
} from './definitions.js';
import { compareMetric, type GateResult } from './gate.js';
import { configOrFail, parseInputOrFail, parsers } from './parse-input.js';
import { Patches } from './patches.js';
import { runOutputRoot, runTag } from './run-scope.js';
import {
  currentDetails,
  messageNote,
  invalidConfigDetails,
  reportNote,
  runSummary,
  stageTitle,
  statusLine,
  type StoryNote,
} from './run-story.js';
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
  /** The config as the first run parsed it: carried over continue-as-new, never parsed again. */
  parsed?: PipelineConfig;
  /** The previous run continued as new while paused: this one starts paused. */
  paused?: boolean;
  /** How often a running stage wakes the workflow to check whether to continue as new; default 1 hour. */
  historyCheckIntervalMs?: number;
  /**
   * First and longest wait between attempts of a stage (a busy GPU is waited for with these); default 5 s and
   * 1 minute. Tests shrink them to show a long queue without waiting for real.
   */
  retryIntervalsMs?: { initial: number; maximum: number };
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
  // Runs that started before this deploy replay without the marker and keep their old path (patches.ts).
  const recorded = patched(Patches.recordedInput);
  // Summaries on activities and timers, and the invalid-config status, are commands older runs never issued.
  const story = patched(Patches.uiStory);
  // Answered while the input is parsed; replaced by the real progress right after.
  let starting = startingProgress(options.state?.outputRoot ?? '');
  setHandler(progressQuery, () => starting);
  const config: PipelineConfig =
    options.parsed ??
    (recorded
      ? configOrFail(await parseRecorded())
      : parseInputOrFail(pipelineConfigSchema, rawConfig, 'pipeline config'));

  /** The recorded parse; a bad config shows in the list (VlmflowStatus) and in current details before it fails. */
  async function parseRecorded() {
    const parsed = await parsers.parsePipelineInput(rawConfig);
    if (!parsed.ok) {
      starting = { ...starting, status: 'failed', details: `invalid config: ${parsed.message}` };
      setCurrentDetails(invalidConfigDetails(parsed.issues));
      if (story) upsertSearchAttributes([{ key: VlmflowStatus, value: 'invalid-config' }]);
    }
    return parsed;
  }
  const info = workflowInfo();
  const workflowId = info.workflowId;
  // The run's own name for its jobs and folders (one continue-as-new chain); older runs used the workflow id.
  const tag = recorded ? runTag(info.firstExecutionRunId) : '';
  const watcher = recorded ? `${workflowId}/${tag}` : undefined;
  const state: PipelineState = options.state ?? {
    outputRoot:
      config.outputUri || (recorded ? runOutputRoot(workflowId, info.firstExecutionRunId) : `runs/${workflowId}`),
    completed: {},
  };
  const root = state.outputRoot;

  const retry = options.retryIntervalsMs;
  const acts = proxyActivities<Activities>({
    taskQueue: options.gpuTaskQueue ?? GPU_TASK_QUEUE,
    // Hours-long training: no short start-to-close; a dead worker is noticed through heartbeats instead.
    startToCloseTimeout: '7 days',
    heartbeatTimeout: options.heartbeatTimeoutMs ?? '3 minutes',
    ...(recorded
      ? {
          // The cleanup activity stops the job, so the workflow need not wait for an attempt that may be gone.
          cancellationType: ActivityCancellationType.TRY_CANCEL,
          // No attempt limit: a busy GPU is waited for; the activity ends the stage after 20 real failures in a row.
          retry: {
            initialInterval: retry?.initial ?? '5s',
            backoffCoefficient: 2,
            maximumInterval: retry?.maximum ?? '1 minute',
          },
        }
      : {
          // Cancel waits until the worker confirms the job stopped (checkpoint saved, GPU freed).
          cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
          retry: { initialInterval: '5s', backoffCoefficient: 2, maximumInterval: '2 minutes', maximumAttempts: 20 },
        }),
  });
  const cleanup = proxyActivities<Activities>({
    taskQueue: options.gpuTaskQueue ?? GPU_TASK_QUEUE,
    startToCloseTimeout: '15 minutes',
    heartbeatTimeout: options.heartbeatTimeoutMs ?? '3 minutes',
    retry: { initialInterval: retry?.initial ?? '5s', maximumInterval: retry?.maximum ?? '1 minute' },
  });

  // A grpo section adds its stages only for runs that started with this code (patches.ts); the marker is written
  // only when there is a grpo section, so runs without one replay as before.
  const grpo = config.grpo && patched(Patches.grpoStage) ? config.grpo : undefined;

  // ---- progress, pause and resume -------------------------------------------------------------------
  const stageOrder: StageName[] = [
    'prepare',
    'sft',
    ...(config.dpo ? (['prepare-preference', 'dpo'] as const) : []),
    ...(grpo?.dataset ? (['prepare-grpo'] as const) : []),
    ...(grpo ? (['grpo'] as const) : []),
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
  let paused = options.paused ?? false;
  let stageScope: CancellationScope | undefined;
  /** What current details say besides the progress: the run's summary, and at the end its report or reason. */
  const told: Omit<StoryNote, 'paused'> = { summary: runSummary(config) };
  // The descriptions are what the UI's Signal and Query dialogs show beside the names.
  setHandler(progressQuery, () => progress, {
    description: "Stages and status; step, loss and ETA are in the running stage's heartbeat details",
  });
  setHandler(
    pauseSignal,
    (reason?: string) => {
      if (paused || progress.status !== 'running') return;
      paused = true;
      log.info('pause requested', { reason });
      stageScope?.cancel();
      refresh();
    },
    { description: 'Checkpoint the running stage and wait for resume (input: an optional reason, a JSON string)' },
  );
  setHandler(
    resumeSignal,
    () => {
      if (!paused) return;
      paused = false;
      log.info('resume requested');
      refresh();
    },
    { description: 'Continue a paused run: its stage resumes from its checkpoint (no input)' },
  );

  function stageSummary(name: string): StageSummary | undefined {
    return progress.stages.find((s) => s.name === name);
  }

  /** The query's status line and the UI's current details (no history cost: neither is a command). */
  function refresh() {
    progress.details = statusLine(progress, paused);
    setCurrentDetails(currentDetails(progress, { ...told, paused }));
  }

  /** A stage activity's options: a summary naming the stage in the UI's timeline (runs since Patches.uiStory). */
  function titled(name: StageName): { summary?: string } {
    return story ? { summary: stageTitle(name, config) } : {};
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
  refresh();

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
    if (workflowInfo().continueAsNewSuggested) await continueAsNewNow({ nextStage: name });
    progress.stage = name;
    Object.assign(progress, { step: 0, totalSteps: 0, loss: null, etaSeconds: null });
    upsertSearchAttributes([{ key: VlmflowStage, value: name }]);
    for (;;) {
      if (paused) {
        summary.status = 'paused';
        setStatus('paused');
        await condition(() => !paused || (recorded && workflowInfo().continueAsNewSuggested));
        if (paused) await continueAsNewNow({ pausedAt: name });
        setStatus('running');
      }
      summary.status = 'running';
      // The same id after a pause: the worker starts a new attempt that resumes from the stage's checkpoints.
      // A keyed stage's job is named by its content key, so an identical earlier run's result is attached to.
      summary.jobId = key ? `stages/${key}` : recorded ? `${workflowId}/${tag}/${name}` : `${workflowId}/${name}`;
      const outputUri = key ? `stages/${key}` : `${root}/${name}`;
      refresh();
      stageScope = new CancellationScope();
      try {
        const running = stageScope.run(() => fn(summary.jobId!, outputUri, progress.lastCheckpoint));
        const ran = recorded ? await whileWatchingHistory(running, name) : await running;
        const result = { ...ran, fingerprint: ran.fingerprint || key || '' };
        Object.assign(summary, summaryOf(name, result));
        state.completed[name] = result;
        refresh();
        return result;
      } catch (err) {
        if (err instanceof ContinueAsNew) throw err; // the job runs on; the next run attaches to it
        const stopping = isCancellation(err) && (CancellationScope.current().consideredCancelled || paused);
        if (recorded && stopping) {
          // The attempt may be gone (its TS worker died): the cleanup reaches the job whatever happened to it.
          const reason = paused ? 'paused' : 'cancelled';
          const stopped = await CancellationScope.nonCancellable(() =>
            cleanup.stopJob.executeWithOptions(story ? { summary: `stop the ${name} job (${reason})` } : {}, [
              { jobId: summary.jobId!, watcher: watcher!, reason },
            ]),
          );
          // Where it stopped: shown while paused, and the resume hint.
          Object.assign(progress, { step: stopped.step, totalSteps: stopped.totalSteps });
          if (stopped.lastCheckpoint) progress.lastCheckpoint = stopped.lastCheckpoint;
        }
        if (stopping && paused && !CancellationScope.current().consideredCancelled) {
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

  /**
   * The stage's result; meanwhile, every historyCheckIntervalMs, a timer wakes the workflow so it can continue as
   * new when Temporal suggests it (a long stage writes no other events). The activity is left running: the next
   * run's stage attaches to its job by job id.
   */
  async function whileWatchingHistory(running: Promise<JobResult>, name: StageName): Promise<JobResult> {
    const settled = running.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    for (;;) {
      const timerScope = new CancellationScope();
      const tick = timerScope
        .run(() =>
          sleep(
            options.historyCheckIntervalMs ?? '1 hour',
            // Named for the stage it waits beside: the timeline shows it as a bar next to the stage's.
            story ? { summary: `history check during ${name}` } : undefined,
          ),
        )
        .then(
          () => 'tick' as const,
          () => 'cancelled' as const,
        );
      const first = await Promise.race([settled, tick]);
      if (first === 'tick') {
        if (workflowInfo().continueAsNewSuggested) await continueAsNewNow({ duringStage: name });
        continue;
      }
      if (first === 'cancelled') return running; // the run is being cancelled: the stage's outcome says how
      timerScope.cancel();
      if ('error' in first) throw first.error;
      return first.value;
    }
  }

  /** Continues as new with what this run knows: the parsed config, the finished stages, pause. */
  async function continueAsNewNow(where: Record<string, string>): Promise<never> {
    log.info('history is long; continuing as new', where);
    return continueAsNew<typeof fineTunePipeline>(rawConfig, {
      ...options,
      state,
      ...(recorded ? { parsed: config, paused } : {}),
    });
  }

  /** A stage's content key when reuse is on (see stage-key.ts); null runs it under this run's own folder. */
  function keyFor(name: StageName, inputs: Record<string, unknown>, fingerprints: string[]): string | null {
    return config.reuse ? stageKey(name, { model: config.model, ...inputs }, fingerprints) : null;
  }

  /**
   * SFT, DPO or GRPO; after an out-of-memory failure, once more with half the micro-batch (same effective batch,
   * so GRPO's groups still fit it).
   */
  async function train(
    name: 'sft' | 'dpo' | 'grpo',
    dataset: JobResult,
    adapter: JobResult | null,
    maxLengthOf: number = config.dataset.maxLength,
  ): Promise<JobResult> {
    const spec = name === 'sft' ? config.sft : name === 'dpo' ? config.dpo! : grpo!;
    const dpo = name === 'dpo' ? pick(config.dpo!) : undefined;
    const grpoSettings = name === 'grpo' ? pickGrpo(grpo!) : undefined;
    const maxLength = name === 'dpo' && patched(Patches.dpoMaxLength) ? config.dpo!.dataset.maxLength : maxLengthOf;
    let training: TrainingConfig = spec.training;
    for (;;) {
      const { retryOnOutOfMemory: _ignored, ...settings } = training;
      const inputs = {
        lora: spec.lora,
        training: settings,
        dpo,
        maxLength,
        ...(grpoSettings ? { grpo: grpoSettings } : {}),
      };
      const key = keyFor(name, inputs, [dataset.fingerprint, ...(adapter ? [adapter.fingerprint] : [])]);
      try {
        return await stage(name, key, (jobId, outputUri, checkpoint) =>
          acts.train.executeWithOptions(titled(name), [
            {
              jobId,
              watcher,
              stage: name,
              kind: name,
              model: config.model,
              adapterUri: adapter ? adapterOf(adapter) : '',
              datasetUri: datasetOf(dataset),
              maxLength,
              lora: spec.lora,
              training,
              dpo,
              grpo: grpoSettings,
              outputUri: key
                ? outputUri
                : `${outputUri}${training === spec.training ? '' : `-mb${training.microBatchSize}`}`,
              resumeFromCheckpoint: checkpoint,
              tracking: config.tracking,
            },
          ]),
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
  function prepare(
    name: 'prepare' | 'prepare-preference' | 'prepare-grpo',
    dataset: PipelineConfig['dataset'],
  ): Promise<JobResult> {
    return stage(name, null, (jobId, outputUri) =>
      acts.prepareDataset.executeWithOptions(titled(name), [
        {
          jobId,
          watcher,
          stage: name,
          model: config.model,
          dataset,
          outputUri: config.reuse ? 'datasets' : outputUri,
        },
      ]),
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

    const trained = [{ name: 'sft', result: sft }, ...(tuned.name === 'dpo' ? [tuned] : [])];
    if (grpo) {
      const prompts = grpo.dataset ? await prepare('prepare-grpo', grpo.dataset) : prepared;
      const start = grpo.from === 'base' ? null : grpo.from === 'dpo' ? tuned.result : sft;
      tuned = { name: 'grpo', result: await train('grpo', prompts, start, (grpo.dataset ?? config.dataset).maxLength) };
      trained.push(tuned);
      if (config.evaluate.on === 'grpo') evalDataset = prompts;
    }

    const variants = [
      { name: 'base', adapterUri: '', trainingLogUri: '' },
      ...trained.map(({ name, result }) => ({
        name,
        adapterUri: adapterOf(result),
        trainingLogUri: result.artifacts.training_log ?? '',
      })),
    ];
    const evalKey = keyFor('evaluate', { evaluate: config.evaluate, variants: variants.map((v) => v.name) }, [
      evalDataset.fingerprint,
      ...trained.map(({ result }) => result.fingerprint),
    ]);
    const evaluation = await stage('evaluate', evalKey, (jobId, outputUri) =>
      acts.evaluate.executeWithOptions(titled('evaluate'), [
        {
          jobId,
          watcher,
          stage: 'evaluate',
          model: config.model,
          variants,
          datasetUri: datasetOf(evalDataset),
          evaluate: config.evaluate,
          outputUri,
          tracking: config.tracking,
        },
      ]),
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
        acts.exportModel.executeWithOptions(titled('export'), [
          {
            jobId,
            watcher,
            stage: 'export',
            model: config.model,
            adapterUri: adapterOf(tuned.result),
            outputUri,
            pushToHub: config.export.pushToHub,
            privateRepo: config.export.privateRepo,
            tracking: config.tracking,
            card: {
              workflow_id: workflowId,
              data_fingerprint: prepared.fingerprint,
              ...(evaluation.artifacts.metrics ? { eval_metrics_uri: evaluation.artifacts.metrics } : {}),
            },
          },
        ]),
      );
      modelUri = exported.artifacts.model ?? '';
    }

    progress.stage = null;
    const flagged = gate && !gate.passed ? gate : null;
    // Current details end in the outcome: the gate's verdict when it flagged the run, and the report.
    told.gateFlagged = flagged !== null;
    told.note = [flagged ? messageNote(flagged.message) : '', reportNote(evaluation.artifacts.report ?? '')]
      .filter(Boolean)
      .join(' · ');
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
    if (!(err instanceof ContinueAsNew)) {
      if (!isCancellation(err)) told.note = messageNote(failureMessage(err));
      setStatus(isCancellation(err) ? 'cancelled' : 'failed');
    }
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

function pickGrpo(grpo: NonNullable<PipelineConfig['grpo']>): GrpoSettings {
  const { dataset: _dataset, from: _from, lora: _lora, training: _training, ...settings } = grpo;
  return settings;
}

function startingProgress(outputRoot: string): PipelineProgress {
  return {
    status: 'running',
    stage: null,
    stages: [],
    step: 0,
    totalSteps: 0,
    loss: null,
    etaSeconds: null,
    lastCheckpoint: '',
    outputRoot,
    details: 'parsing the config',
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
