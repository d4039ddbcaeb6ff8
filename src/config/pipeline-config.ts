/**
 * The fine-tune pipeline's config, typed once with zod: the CLI validates a YAML/JSON file with it before
 * starting anything, and `fineTunePipeline` parses its raw input with it as its first step (JSON typed into
 * the Temporal UI included). Every object is strict, so a misspelt field is an error, not a silent default.
 * Defaults are sane for SmolVLM-Instruct. No Node built-ins: workflows import this module.
 */
import { z } from 'zod';

export const quantizations = ['none', 'nf4', 'int8'] as const;
export const dtypes = ['auto', 'float32', 'bfloat16', 'float16'] as const;
export const datasetLayouts = ['auto', 'messages', 'sharegpt', 'vqa', 'preference', 'image_folder'] as const;
export const evalMetrics = [
  'vqa_accuracy',
  'relaxed_accuracy',
  'anls',
  'cer',
  'wer',
  'bleu4',
  'rouge_l',
  'cider',
  'chosen_pick_rate',
  'preference_accuracy',
  'reward_margin',
] as const;

const positiveInt = z.number().int().positive();
const fraction = z.number().min(0).max(1);

export const modelSchema = z
  .object({
    /** Hub id or local folder (absolute, or relative to the worker's model root). */
    id: z.string().min(1).default('HuggingFaceTB/SmolVLM-Instruct'),
    /** Hub branch, tag or commit; empty means the default branch. */
    revision: z.string().default(''),
    /** nf4 = QLoRA (needs CUDA). */
    quantization: z.enum(quantizations).default('none'),
    /** auto = bf16 on CUDA, fp32 on CPU. */
    dtype: z.enum(dtypes).default('auto'),
    /** Run model code from the hub; off unless a person asks for it. */
    trustRemoteCode: z.boolean().default(false),
  })
  .strict();

export const datasetSourceSchema = z
  .object({
    /** Local file or folder (JSON, JSONL, Parquet, image folder) or a hub dataset id. */
    uri: z.string().min(1),
    layout: z.enum(datasetLayouts).default('auto'),
    /** Hub split selection, e.g. "train[:1000]". */
    split: z.string().default(''),
    /** Hub config name. */
    subset: z.string().default(''),
    /** Column renames for the VQA layout, e.g. { query: question, label: answers }. */
    columns: z.record(z.string(), z.string()).default({}),
  })
  .strict();

export const datasetSchema = z
  .object({
    sources: z.array(datasetSourceSchema).min(1),
    /** Rows longer than this many tokens (image tokens included) are dropped, never truncated. */
    maxLength: z.number().int().min(16).default(2048),
    /** Share of rows held out for evaluation. */
    evalFraction: z.number().gt(0).lt(1).default(0.1),
    seed: z.number().int().nonnegative().default(42),
    /** Fail when more than this share of rows is dropped. */
    maxDropFraction: fraction.default(0.05),
    /** Keep at most this many rows; 0 = all. */
    maxRows: z.number().int().nonnegative().default(0),
  })
  .strict();

export const loraSchema = z
  .object({
    r: positiveInt.default(8),
    alpha: positiveInt.default(8),
    dropout: z.number().min(0).lt(1).default(0.1),
    /** Empty = the text model's attention and MLP projections. */
    targetModules: z.array(z.string().min(1)).default([]),
    useDora: z.boolean().default(false),
    /** Also adapt the vision tower. */
    tuneVision: z.boolean().default(false),
  })
  .strict();

export const trainingSchema = z
  .object({
    learningRate: z.number().positive().max(1).default(1e-4),
    numEpochs: z.number().positive().default(1),
    /** Overrides numEpochs when > 0. */
    maxSteps: z.number().int().nonnegative().default(0),
    microBatchSize: positiveInt.default(4),
    gradientAccumulationSteps: positiveInt.default(4),
    warmupRatio: z.number().min(0).lt(1).default(0.03),
    lrScheduler: z.enum(['linear', 'cosine', 'constant', 'constant_with_warmup']).default('linear'),
    weightDecay: z.number().min(0).default(0.01),
    maxGradNorm: z.number().positive().default(1.0),
    seed: z.number().int().nonnegative().default(42),
    gradientCheckpointing: z.boolean().default(true),
    saveSteps: positiveInt.default(25),
    /** Evaluate on the held-out split every N steps; 0 = never. */
    evalSteps: z.number().int().nonnegative().default(25),
    loggingSteps: positiveInt.default(5),
    /** Keep at most this many checkpoints; 0 = all. */
    saveTotalLimit: z.number().int().nonnegative().default(2),
    /** Processes for a multi-device launch (1 to 64); 1 = one process. */
    numProcesses: positiveInt.max(64).default(1),
    /** Padding-free micro-batches: rows back to back with per-row positions, no pad tokens (faster, same loss). */
    packing: z.boolean().default(false),
    /**
     * After an out-of-memory failure, retry once with half the micro-batch and twice the accumulation
     * (same effective batch).
     */
    retryOnOutOfMemory: z.boolean().default(true),
  })
  .strict();

export const sftSchema = z
  .object({
    lora: loraSchema.default(loraSchema.parse({})),
    training: trainingSchema.default(trainingSchema.parse({})),
  })
  .strict();

export const dpoSchema = z
  .object({
    /** Preference rows (prompt, chosen, rejected, images), prepared like the SFT dataset. */
    dataset: datasetSchema,
    lora: loraSchema.default(loraSchema.parse({})),
    training: trainingSchema.default(trainingSchema.parse({ learningRate: 5e-6 })),
    beta: z.number().positive().default(0.1),
    lossType: z.enum(['sigmoid', 'ipo', 'hinge', 'robust']).default('sigmoid'),
    maxPromptLength: positiveInt.default(1024),
    maxCompletionLength: positiveInt.default(256),
  })
  .strict();

export const rewardKinds = [
  'exact_match',
  'vqa_accuracy',
  'relaxed_accuracy',
  'anls',
  'numeric',
  'format',
  'custom',
] as const;
export const grpoLossTypes = ['grpo', 'dapo', 'dr_grpo', 'bnpo', 'cispo', 'sapo', 'luspo', 'vespo'] as const;
const tagName = z.string().regex(/^([A-Za-z][\w-]*)?$/, 'use letters, digits, "_" or "-", starting with a letter');

/** One verifiable reward of a GRPO run (python-worker/src/vlmflow_worker/train/rewards.py says how each scores). */
export const rewardSchema = z
  .object({
    kind: z.enum(rewardKinds),
    /** Weight in the sum a completion is rewarded with; 0 logs the reward without training on it. */
    weight: z.number().default(1),
    /** Name in the progress figures and the report; empty = the kind (custom: the function name). */
    name: tagName.default(''),
    /** format: the completion must hold one <tag>...</tag>. Accuracy kinds: the answer is read from inside it. */
    tag: tagName.default(''),
    /** numeric: right within max(absoluteTolerance, relativeTolerance × |target|). */
    relativeTolerance: z.number().min(0).default(0),
    absoluteTolerance: z.number().min(0).default(0),
    /**
     * custom: a Python file under the worker's data roots and the function in it. This runs your code in the
     * training process; the worker refuses it unless started with VLMFLOW_ALLOW_USER_REWARDS=1.
     */
    file: z.string().default(''),
    function: z.string().default(''),
  })
  .strict()
  .superRefine((reward, ctx) => {
    if (reward.kind === 'format' && !reward.tag) {
      ctx.addIssue({ code: 'custom', path: ['tag'], message: 'the format reward needs the tag to look for' });
    }
    if (reward.kind === 'custom' && (!reward.file || !reward.function)) {
      ctx.addIssue({ code: 'custom', path: ['file'], message: 'a custom reward needs file and function' });
    }
    if (reward.kind !== 'custom' && (reward.file || reward.function)) {
      ctx.addIssue({ code: 'custom', path: ['file'], message: `file and function belong to kind custom` });
    }
    if (reward.kind !== 'numeric' && (reward.relativeTolerance || reward.absoluteTolerance)) {
      ctx.addIssue({ code: 'custom', path: ['relativeTolerance'], message: 'tolerances apply to kind numeric only' });
    }
  });

export const grpoSchema = z
  .object({
    /**
     * Prompts with reference answers (conversation rows, prepared like the SFT dataset); omit to use the SFT
     * dataset's rows.
     */
    dataset: datasetSchema.optional(),
    /** The adapter GRPO continues: the SFT one, the DPO one (needs dpo), or a new one on the base model. */
    from: z.enum(['sft', 'dpo', 'base']).default('sft'),
    lora: loraSchema.default(loraSchema.parse({})),
    /** microBatchSize counts completions; microBatchSize × gradientAccumulationSteps is a multiple of numGenerations. */
    training: trainingSchema.default(trainingSchema.parse({ learningRate: 1e-5 })),
    /** Completions sampled per prompt (the group whose mean reward is each one's baseline). */
    numGenerations: z.number().int().min(2).default(8),
    maxCompletionLength: positiveInt.default(256),
    temperature: z.number().positive().default(1),
    topP: z.number().gt(0).max(1).default(1),
    /** KL coefficient against the starting model; 0 skips the reference pass. */
    beta: z.number().min(0).default(0),
    /** TRL's loss variants: grpo, dapo (default), dr_grpo, bnpo, cispo, sapo, luspo, vespo. */
    lossType: z.enum(grpoLossTypes).default('dapo'),
    /** token = GRPO's per-token ratios; sequence = GSPO. */
    importanceSamplingLevel: z.enum(['token', 'sequence']).default('token'),
    /** Advantage scaling by the reward spread of the group, the batch, or none (Dr. GRPO). */
    scaleRewards: z.enum(['group', 'batch', 'none']).default('group'),
    /** Clipping of the policy ratio: [1 - epsilon, 1 + epsilonHigh] (epsilonHigh unset = epsilon; DAPO: 0.28). */
    epsilon: z.number().positive().default(0.2),
    epsilonHigh: z.number().positive().optional(),
    /** Optimisation passes over each generated batch. */
    numIterations: positiveInt.default(1),
    /** Leave completions cut at maxCompletionLength out of the loss (DAPO). */
    maskTruncatedCompletions: z.boolean().default(false),
    rewards: z
      .array(rewardSchema)
      .min(1)
      .default([rewardSchema.parse({ kind: 'vqa_accuracy' })]),
  })
  .strict()
  .superRefine((grpo, ctx) => {
    const { microBatchSize, gradientAccumulationSteps, numProcesses } = grpo.training;
    const completions = microBatchSize * gradientAccumulationSteps * numProcesses;
    if (completions % grpo.numGenerations !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['numGenerations'],
        message:
          `training.microBatchSize × gradientAccumulationSteps × numProcesses (${completions} completions a step) ` +
          `must be a multiple of numGenerations (${grpo.numGenerations})`,
      });
    }
    const names = grpo.rewards.map((r) => r.name || (r.kind === 'custom' ? r.function : r.kind));
    if (new Set(names).size !== names.length) {
      ctx.addIssue({ code: 'custom', path: ['rewards'], message: `two rewards share a name (${names.join(', ')})` });
    }
  });

export const generationSchema = z
  .object({
    maxNewTokens: positiveInt.default(64),
    doSample: z.boolean().default(false),
    /** Sampling temperature (with doSample); for greedy decoding set doSample false. */
    temperature: z.number().positive().default(1),
    topP: z.number().gt(0).max(1).default(1),
    topK: z.number().int().nonnegative().default(0),
    repetitionPenalty: z.number().positive().default(1),
    seed: z.number().int().nonnegative().default(0),
  })
  .strict();

export const evaluateSchema = z
  .object({
    /**
     * Which eval split: the SFT dataset's, (with dpo) the preference dataset's, whose rows give preference
     * accuracy and reward margins, or (with a grpo dataset) the GRPO prompts'.
     */
    on: z.enum(['sft', 'preference', 'grpo']).default('sft'),
    /** Empty = the metrics that fit the dataset. */
    metrics: z.array(z.enum(evalMetrics)).default([]),
    generation: generationSchema.default(generationSchema.parse({})),
    batchSize: positiveInt.default(8),
    /** Evaluate at most this many rows; 0 = all. */
    maxSamples: z.number().int().nonnegative().default(0),
    /** Resamples for the confidence intervals and the paired comparison. */
    bootstrapSamples: positiveInt.default(200),
  })
  .strict();

export const gateSchema = z
  .object({
    /** Metric compared between the tuned model and the base. */
    metric: z.enum(evalMetrics),
    /** The tuned model must beat the base by at least this much. */
    margin: z.number().default(0),
    /** Lower is better for this metric (cer, wer). */
    lowerIsBetter: z.boolean().default(false),
    /** fail: the run fails (nothing exported); flag: the run completes marked "gate failed". */
    onFail: z.enum(['fail', 'flag']).default('fail'),
  })
  .strict();

export const exportSchema = z
  .object({
    enabled: z.boolean().default(true),
    /** Push the merged model to this hub repo (needs a token and network). */
    pushToHub: z.string().default(''),
    privateRepo: z.boolean().default(true),
  })
  .strict();

export const mlflowSchema = z
  .object({
    /** The MLflow tracking server (also its model registry), e.g. http://mlflow:5000. */
    trackingUri: z
      .string()
      .trim()
      .regex(/^https?:\/\/[^\s/]+/, "give the tracking server's http(s) address, e.g. http://mlflow:5000"),
    /** Created when missing. */
    experimentName: z.string().trim().min(1).default('vlmflow'),
    /** The MLflow run's name; empty = the workflow id. One pipeline run is one MLflow run, whatever its name. */
    runName: z.string().trim().default(''),
    /** Export registers the merged model under this name in the model registry; empty = no registration. */
    registeredModelName: z.string().trim().default(''),
  })
  .strict();

export const wandbSchema = z
  .object({
    project: z.string().trim().min(1),
    /** Team or user; empty = the API key's default entity. */
    entity: z.string().trim().default(''),
  })
  .strict();

/**
 * Experiment tracking. Every training stage writes TensorBoard event files beside its checkpoints whatever this
 * says; MLflow (params, per-step metrics, the evaluation table and report, the adapter, the registered model) and
 * Weights & Biases (the trainer's report_to; needs the wandb package on the worker) when their section is given.
 */
export const trackingSchema = z
  .object({
    mlflow: mlflowSchema.optional(),
    wandb: wandbSchema.optional(),
  })
  .strict();

export const pipelineConfigSchema = z
  .object({
    /** A short name for the run; the CLI builds workflow ids from it. */
    name: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]*$/i, 'use letters, digits, ".", "_" or "-"')
      .max(80)
      .default('finetune'),
    model: modelSchema.default(modelSchema.parse({})),
    dataset: datasetSchema,
    sft: sftSchema.default(sftSchema.parse({})),
    /** Preference tuning after SFT; omit to skip. */
    dpo: dpoSchema.optional(),
    /** Online RL with verifiable rewards after SFT (or DPO, or from the base); omit to skip. */
    grpo: grpoSchema.optional(),
    evaluate: evaluateSchema.default(evaluateSchema.parse({})),
    /** Compare tuned against base before exporting; omit to skip. */
    gate: gateSchema.optional(),
    export: exportSchema.default(exportSchema.parse({})),
    /** Artifact-store folder for this run; default runs/<workflow id>. */
    outputUri: z.string().default(''),
    /** Reuse stages whose inputs are unchanged (content fingerprint) from earlier runs. */
    reuse: z.boolean().default(true),
    tracking: trackingSchema.default(trackingSchema.parse({})),
  })
  .strict()
  .superRefine((config, ctx) => {
    if (config.evaluate.on === 'preference' && !config.dpo) {
      ctx.addIssue({
        code: 'custom',
        path: ['evaluate', 'on'],
        message: '"preference" needs a dpo section with a preference dataset; use "sft" or add dpo',
      });
    }
    if (config.tracking.mlflow?.registeredModelName && !config.export.enabled) {
      ctx.addIssue({
        code: 'custom',
        path: ['tracking', 'mlflow', 'registeredModelName'],
        message: 'the export stage registers the model: set export.enabled true, or leave registeredModelName empty',
      });
    }
    if (config.evaluate.on === 'grpo' && !config.grpo?.dataset) {
      ctx.addIssue({
        code: 'custom',
        path: ['evaluate', 'on'],
        message: '"grpo" needs a grpo section with its own dataset; use "sft" or add grpo.dataset',
      });
    }
    if (config.grpo?.from === 'dpo' && !config.dpo) {
      ctx.addIssue({
        code: 'custom',
        path: ['grpo', 'from'],
        message: '"dpo" needs a dpo section; use "sft" or "base"',
      });
    }
    const preferenceOnly = ['preference_accuracy', 'reward_margin', 'chosen_pick_rate'];
    if (config.gate && preferenceOnly.includes(config.gate.metric) && config.evaluate.on !== 'preference') {
      ctx.addIssue({
        code: 'custom',
        path: ['gate', 'metric'],
        message: `${config.gate.metric} needs preference rows: set evaluate.on to "preference" (with dpo)`,
      });
    }
  });

/** What a person writes (defaults optional). */
export type PipelineConfigInput = z.input<typeof pipelineConfigSchema>;
/** What the workflow runs with (defaults filled). */
export type PipelineConfig = z.output<typeof pipelineConfigSchema>;
export type ModelConfig = z.output<typeof modelSchema>;
export type DatasetConfig = z.output<typeof datasetSchema>;
export type LoraConfig = z.output<typeof loraSchema>;
export type TrainingConfig = z.output<typeof trainingSchema>;
export type EvaluateConfig = z.output<typeof evaluateSchema>;
export type GenerationConfig = z.output<typeof generationSchema>;
export type DpoConfig = z.output<typeof dpoSchema>;
export type TrackingConfig = z.output<typeof trackingSchema>;
export type GrpoConfig = z.output<typeof grpoSchema>;
export type RewardConfig = z.output<typeof rewardSchema>;
