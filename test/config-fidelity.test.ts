/**
 * Config fidelity (issue 16): for every field of the pipeline config that reaches the Python worker, zeros
 * included, the value the worker's job runs with equals what the person wrote. Each config goes through the
 * requests the stage activities send (activities/requests.ts), protobuf bytes, and the worker's own decoding
 * (python-worker/tests/requests_as_run.py: SFTConfig, DPOTrainConfig, GRPOTrainConfig and its rewards, prep's and
 * evaluate's settings).
 */
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { evaluateRequest, exportRequest, prepareDatasetRequest, trainRequest } from '../activities/requests.js';
import { PrepareDatasetRequest, EvaluateRequest, ExportRequest, TrainRequest } from '../src/gen/vlmflow/v1/jobs.js';
import {
  datasetSchema,
  dpoSchema,
  evaluateSchema,
  grpoSchema,
  loraSchema,
  mlflowSchema,
  modelSchema,
  pipelineConfigSchema,
  rewardSchema,
  trainingSchema,
  wandbSchema,
  type PipelineConfig,
} from '../src/config/pipeline-config.js';
import { projectRoot, workerPython } from '../src/paths.js';

type Kind = 'sft' | 'dpo' | 'grpo' | 'prepare' | 'prepare-preference' | 'evaluate' | 'export';
const KINDS = 7; // requests per config (requestsOf)
type Settings = Record<string, unknown>;

const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Where each config field lands: [config path, request kind, the worker's setting name]. */
function fieldMap(): [string[], Kind, string][] {
  const map: [string[], Kind, string][] = [];
  const lora: Record<string, string> = { r: 'lora_r', alpha: 'lora_alpha', dropout: 'lora_dropout' };
  for (const [kind, section] of [
    ['sft', 'sft'],
    ['dpo', 'dpo'],
    ['grpo', 'grpo'],
  ] as const) {
    for (const key of Object.keys(loraSchema.shape)) map.push([[section, 'lora', key], kind, lora[key] ?? snake(key)]);
    for (const key of Object.keys(trainingSchema.shape)) {
      if (key !== 'retryOnOutOfMemory') map.push([[section, 'training', key], kind, snake(key)]); // the workflow's
    }
    map.push([['model', 'quantization'], kind, 'quantization'], [['model', 'dtype'], kind, 'dtype']);
    map.push([['model', 'id'], kind, 'model_id'], [['model', 'revision'], kind, 'revision']);
  }
  map.push([['dataset', 'maxLength'], 'sft', 'max_length'], [['dpo', 'dataset', 'maxLength'], 'dpo', 'max_length']);
  for (const key of ['beta', 'lossType', 'maxPromptLength', 'maxCompletionLength']) {
    map.push([['dpo', key], 'dpo', snake(key)]);
  }
  map.push([['dataset', 'maxLength'], 'grpo', 'max_length']); // no grpo.dataset: the SFT rows' limit
  for (const key of Object.keys(grpoSchema.shape)) {
    if (!['dataset', 'from', 'lora', 'training', 'rewards'].includes(key))
      map.push([['grpo', key], 'grpo', snake(key)]);
  }
  for (const key of ['kind', 'weight', 'name', 'tag', 'relativeTolerance', 'absoluteTolerance']) {
    map.push([['grpo', 'rewards', '0', key], 'grpo', `rewards[0].${snake(key)}`]);
  }
  for (const [kind, path] of [
    ['prepare', ['dataset']],
    ['prepare-preference', ['dpo', 'dataset']],
  ] as const) {
    for (const key of ['maxLength', 'evalFraction', 'seed', 'maxDropFraction', 'maxRows']) {
      map.push([[...path, key], kind, snake(key)]);
    }
  }
  for (const key of ['batchSize', 'maxSamples', 'bootstrapSamples'])
    map.push([['evaluate', key], 'evaluate', snake(key)]);
  // Experiment tracking reaches every job that reports to it (TrackingSettings in the worker).
  const tracking: [string[], string][] = [
    [['mlflow', 'trackingUri'], 'mlflow_tracking_uri'],
    [['mlflow', 'experimentName'], 'mlflow_experiment'],
    [['mlflow', 'runName'], 'mlflow_run_name'],
    [['mlflow', 'registeredModelName'], 'mlflow_registered_model'],
    [['wandb', 'project'], 'wandb_project'],
    [['wandb', 'entity'], 'wandb_entity'],
  ];
  for (const kind of ['sft', 'dpo', 'grpo', 'evaluate', 'export'] as const) {
    for (const [path, name] of tracking) map.push([['tracking', ...path], kind, name]);
  }
  return map;
}

/** Values tried in every field: zeros, edges and ordinary values; the schema keeps those it accepts. */
const POOL: unknown[] = [
  0,
  1,
  2,
  0.5,
  0.999,
  3e-5,
  7,
  15,
  16,
  64,
  65,
  4096,
  true,
  false,
  '',
  'x',
  ['q_proj'],
  'https://mlflow.example:8443/base',
];

function enumOptions(schema: unknown): string[] {
  type Node = { options?: string[]; _zod?: { def?: { innerType?: Node } } };
  let node = schema as Node | undefined;
  while (node && !node.options && node._zod?.def?.innerType) node = node._zod.def.innerType;
  return node?.options ?? [];
}

function get(config: unknown, path: string[]): unknown {
  return path.reduce((value: unknown, key) => (value as Record<string, unknown>)[key], config);
}

function withValue(base: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  const copy = structuredClone(base);
  let node = copy;
  for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
  node[path.at(-1)!] = value;
  return copy;
}

const BASE = {
  dataset: { sources: [{ uri: 'rows.jsonl' }] },
  dpo: { dataset: { sources: [{ uri: 'preferences.jsonl' }] } },
  tracking: { mlflow: { trackingUri: 'http://127.0.0.1:5000' }, wandb: { project: 'p' } },
  grpo: { rewards: [{ kind: 'numeric' }] },
};

/** The schema behind a config path, for its enum options. */
function schemaAt(path: string[]): unknown {
  const section = path.at(-2);
  const shapes: Record<string, Record<string, unknown>> = {
    lora: loraSchema.shape,
    training: trainingSchema.shape,
    model: modelSchema.shape,
    dataset: datasetSchema.shape,
    evaluate: evaluateSchema.shape,
    dpo: dpoSchema.shape,
    mlflow: mlflowSchema.shape,
    wandb: wandbSchema.shape,
    grpo: grpoSchema.shape,
    '0': rewardSchema.shape,
  };
  return shapes[section!]?.[path.at(-1)!];
}

function requestsOf(config: PipelineConfig): { kind: Kind; request: string }[] {
  const common = { jobId: 'j', stage: 's', outputUri: 'o', watcher: 'wf/run', tracking: config.tracking };
  const encode = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
  const dpo = config.dpo!;
  const { dataset: _dataset, from: _from, lora: _lora, training: _training, ...grpo } = config.grpo!;
  const section = { sft: config.sft, dpo, grpo: config.grpo! };
  const train = (kind: 'sft' | 'dpo' | 'grpo') =>
    TrainRequest.encode(
      trainRequest({
        ...common,
        kind,
        model: config.model,
        adapterUri: '',
        datasetUri: 'd',
        maxLength: kind === 'dpo' ? dpo.dataset.maxLength : config.dataset.maxLength,
        lora: section[kind].lora,
        training: section[kind].training,
        dpo:
          kind === 'dpo'
            ? {
                beta: dpo.beta,
                lossType: dpo.lossType,
                maxPromptLength: dpo.maxPromptLength,
                maxCompletionLength: dpo.maxCompletionLength,
              }
            : undefined,
        grpo: kind === 'grpo' ? grpo : undefined,
        resumeFromCheckpoint: '',
      }),
    ).finish();
  const prepare = (dataset: PipelineConfig['dataset']) =>
    PrepareDatasetRequest.encode(prepareDatasetRequest({ ...common, model: config.model, dataset })).finish();
  return [
    { kind: 'sft', request: encode(train('sft')) },
    { kind: 'dpo', request: encode(train('dpo')) },
    { kind: 'grpo', request: encode(train('grpo')) },
    { kind: 'prepare', request: encode(prepare(config.dataset)) },
    { kind: 'prepare-preference', request: encode(prepare(dpo.dataset)) },
    {
      kind: 'evaluate',
      request: encode(
        EvaluateRequest.encode(
          evaluateRequest({ ...common, model: config.model, variants: [], datasetUri: 'd', evaluate: config.evaluate }),
        ).finish(),
      ),
    },
    {
      kind: 'export',
      request: encode(
        ExportRequest.encode(
          exportRequest({
            ...common,
            model: config.model,
            adapterUri: 'a',
            pushToHub: '',
            privateRepo: true,
            card: {},
          }),
        ).finish(),
      ),
    },
  ];
}

async function asRun(
  items: { kind: Kind; request: string }[],
): Promise<({ settings: Settings } | { error: string })[]> {
  const input = items
    .map((item) => JSON.stringify({ ...item, kind: item.kind === 'prepare-preference' ? 'prepare' : item.kind }))
    .join('\n');
  const { stdout } = await execa(workerPython, ['-m', 'tests.requests_as_run'], {
    cwd: `${projectRoot}/python-worker`,
    input,
  });
  return stdout.split('\n').map((line) => JSON.parse(line) as { settings: Settings } | { error: string });
}

describe('config fidelity', () => {
  it('every field, zeros included, reaches the worker as written', async () => {
    const map = fieldMap();
    const configs: { label: string; config: PipelineConfig }[] = [
      { label: 'defaults', config: pipelineConfigSchema.parse(BASE) },
    ];
    for (const [path] of map) {
      for (const value of [...POOL, ...enumOptions(schemaAt(path))]) {
        const parsed = pipelineConfigSchema.safeParse(withValue(BASE, path, value));
        if (parsed.success)
          configs.push({ label: `${path.join('.')} = ${JSON.stringify(value)}`, config: parsed.data });
      }
    }
    // Every field can be given a zero or an edge value the schema accepts; the pool is not silently empty.
    expect(configs.length).toBeGreaterThan(map.length * 2);

    const batch = configs.flatMap(({ config }) => requestsOf(config));
    // One worker process for all (its imports are most of this test's time): the batch, then an empty SFT request.
    const answers = await asRun([...batch, { kind: 'sft', request: '' }]);
    const emptyDefaults = answers.pop();
    const defaultTargets = (emptyDefaults as { settings: Settings }).settings.target_modules;

    const mismatches: string[] = [];
    configs.forEach(({ label, config }, c) => {
      const byKind = new Map<Kind, { settings: Settings } | { error: string }>();
      batch.slice(c * KINDS, (c + 1) * KINDS).forEach((item, i) => byKind.set(item.kind, answers[c * KINDS + i]!));
      for (const [path, kind, name] of map) {
        const answer = byKind.get(kind)!;
        if ('error' in answer) {
          mismatches.push(`${label}: the schema accepts it, the ${kind} job refuses it: ${answer.error}`);
          continue;
        }
        let wrote = get(config, path);
        if (name === 'target_modules' && Array.isArray(wrote) && wrote.length === 0) wrote = defaultTargets; // documented
        if (name === 'loss_type' && kind === 'dpo') wrote = [wrote]; // DPO takes a list of losses
        if (wrote === undefined && name === 'epsilon_high') wrote = null; // unset: epsilon (documented)
        if (name === 'dtype' || name === 'quantization') wrote = String(wrote);
        const ran = answer.settings[name];
        const same = typeof wrote === 'number' ? Math.abs((ran as number) - wrote) <= 1e-12 * Math.abs(wrote) : false;
        if (!same && JSON.stringify(ran) !== JSON.stringify(wrote)) {
          mismatches.push(
            `${label}: ${path.join('.')} written ${JSON.stringify(wrote)}, ${kind} runs ${JSON.stringify(ran)}`,
          );
        }
      }
    });
    expect([...new Set(mismatches)]).toEqual([]);
  }, 120_000);
});
