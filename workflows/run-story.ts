/**
 * A fineTunePipeline run in the words the Temporal UI shows (it renders them as markdown):
 *
 * - `runSummary`: one line, e.g. "SFT + DPO · SmolVLM-Instruct · ChartQA". The CLI and schedules set it as the run's
 *   static summary (`startMetadata`), with `runDetails` as its static details.
 * - `stageTitle`: the summary of each stage's activity, so the timeline names the stage (SFT and DPO are both the
 *   `train` activity).
 * - `currentDetails`: where the run stands, ending in its final state. It starts with the run summary, so a run
 *   started from the UI's Start Workflow form (which sets no static summary) tells the same story.
 *
 * Two things about the UI (2.42, checked in a browser by test/temporal-ui.test.ts) shape the text: its markdown
 * turns "500/1500" into a stacked fraction, so a slash between digits gets spaces; and it sizes the frame of the
 * details one line short, so each text ends in a blank line. Deterministic, no Node built-ins: workflows and the CLI
 * import it.
 */
import type { ConfigIssue } from '../src/config/config-issues.js';
import type { PipelineConfig } from '../src/config/pipeline-config.js';
import type { PipelineProgress, StageName, StageStatus } from './definitions.js';

/** The training stages a config runs, in order, as a person names them. */
function trainings(config: PipelineConfig): string[] {
  return ['SFT', ...(config.dpo ? ['DPO'] : []), ...(config.grpo ? ['GRPO'] : [])];
}

/** "SFT + DPO · SmolVLM-Instruct · ChartQA": what the run trains, on which model, with which data. */
export function runSummary(config: PipelineConfig): string {
  const data = new Set([
    datasetLabel(config.dataset),
    ...(config.dpo ? [datasetLabel(config.dpo.dataset)] : []),
    ...(config.grpo?.dataset ? [datasetLabel(config.grpo.dataset)] : []),
  ]);
  return plain(`${trainings(config).join(' + ')} · ${modelLabel(config.model.id)} · ${[...data].join(', ')}`);
}

/** What the config asks for, one line per part: the run's static details. */
export function runDetails(config: PipelineConfig): string {
  const { model, dataset, sft, dpo, grpo, evaluate, gate } = config;
  const lines = [
    `**model** ${code(model.id)}${model.revision ? ` at ${code(model.revision)}` : ''} (${[
      model.quantization === 'none' ? 'LoRA' : `QLoRA ${model.quantization}`,
      `dtype ${model.dtype}`,
    ].join(', ')})`,
    `**data** ${sources(dataset)}`,
    `**SFT** ${training(sft)}`,
    ...(dpo ? [`**DPO** on ${sources(dpo.dataset)} · beta ${dpo.beta}, ${dpo.lossType} · ${training(dpo)}`] : []),
    ...(grpo
      ? [
          `**GRPO** from ${grpo.from === 'base' ? 'the base model' : `the ${grpo.from.toUpperCase()} adapter`} on ${
            grpo.dataset ? sources(grpo.dataset) : 'the SFT prompts'
          } · ${grpo.numGenerations} completions a prompt, ${grpo.lossType}, rewards ${plain(
            grpo.rewards.map((r) => r.name || (r.kind === 'custom' ? r.function : r.kind)).join(', '),
          )} · ${training(grpo)}`,
        ]
      : []),
    `**evaluate** on the ${evaluate.on} split · ${evaluate.metrics.length ? plain(evaluate.metrics.join(', ')) : 'the metrics that fit the data'}${
      evaluate.maxSamples ? ` · at most ${evaluate.maxSamples} rows` : ''
    }`,
    ...(gate
      ? [
          `**gate** ${plain(gate.metric)} must beat the base by ${gate.margin}${gate.lowerIsBetter ? ' (lower is better)' : ''}, else the run ${gate.onFail === 'fail' ? 'fails' : 'is flagged'}`,
        ]
      : []),
    `**export** ${
      config.export.enabled
        ? `the merged model${config.export.pushToHub ? `, pushed to ${code(config.export.pushToHub)}` : ''}`
        : 'off'
    }`,
  ];
  return fitted(lines.map((line) => `- ${line}`).join('\n'));
}

/** The start options that put the story on a run the CLI or a schedule starts. */
export function startMetadata(config: PipelineConfig): { staticSummary: string; staticDetails: string } {
  return { staticSummary: runSummary(config), staticDetails: runDetails(config) };
}

/** The summary of a stage's activity in the timeline, e.g. "DPO training on the SFT adapter". */
export function stageTitle(name: StageName, config: PipelineConfig): string {
  const titles: Record<StageName, string> = {
    prepare: `prepare the SFT data (${datasetLabel(config.dataset)})`,
    'prepare-preference': `prepare the DPO preference pairs (${config.dpo ? datasetLabel(config.dpo.dataset) : ''})`,
    sft: `SFT training (${config.model.quantization === 'none' ? 'LoRA' : 'QLoRA'})`,
    dpo: 'DPO training on the SFT adapter',
    'prepare-grpo': `prepare the GRPO prompts (${config.grpo?.dataset ? datasetLabel(config.grpo.dataset) : ''})`,
    grpo: `GRPO training ${config.grpo?.from === 'base' ? 'on the base model' : `on the ${(config.grpo?.from ?? 'sft').toUpperCase()} adapter`}`,
    evaluate: `evaluate base vs ${trainings(config).join(' vs ')}`,
    gate: 'gate',
    export: `export the merged model${config.export.pushToHub ? ` and push it to ${config.export.pushToHub}` : ''}`,
  };
  return plain(titles[name]);
}

const marks: Partial<Record<StageStatus, string>> = {
  completed: '✓ ',
  reused: '✓ ',
  running: '▶ ',
  paused: '⏸ ',
  failed: '✗ ',
  cancelled: '■ ',
};

/** What `currentDetails` shows besides the progress: the summary and a last line (report, reason, hint). */
export interface StoryNote {
  summary: string;
  paused: boolean;
  /** The last line, as markdown (`reportNote`, `messageNote`); by default a hint that fits the status. */
  note?: string;
  /** The run completed with its gate failed (onFail: flag). */
  gateFlagged?: boolean;
}

/** One plain line for the `progress` query's `details`: "running: stage sft (2 of 6)". */
export function statusLine(progress: Pick<PipelineProgress, 'status' | 'stage' | 'stages'>, paused: boolean): string {
  const { status, at } = standing(progress, paused);
  return `${status}${at}`;
}

/**
 * The run's current details: its summary, its status, every stage with a mark (✓ done, ▶ running, ⏸ paused,
 * ✗ failed, ■ cancelled), and a note.
 */
export function currentDetails(
  progress: Pick<PipelineProgress, 'status' | 'stage' | 'stages'>,
  story: StoryNote,
): string {
  const { status, at } = standing(progress, story.paused);
  const headline = `**${status === 'completed' && story.gateFlagged ? 'completed, gate flagged' : status}**${at}`;
  const strip = progress.stages.map((s) => `${marks[s.status] ?? ''}${s.name}`).join(' · ');
  // A running stage's message (e.g. "out of memory; retrying with micro-batch 2") replaces the hint.
  const running = progress.stages.find((s) => s.name === progress.stage);
  const note =
    story.note ??
    (status === 'paused'
      ? 'the resume signal continues it from its checkpoint'
      : status === 'running' && progress.stage
        ? (running?.message && messageNote(running.message)) || 'step, loss and ETA: the Pending Activities tab'
        : '');
  return fitted([`**${story.summary}**`, headline, strip, ...(note ? [note] : [])].join('  \n'));
}

function standing(
  progress: Pick<PipelineProgress, 'status' | 'stage' | 'stages'>,
  paused: boolean,
): { status: string; at: string } {
  const status = paused && progress.status === 'running' ? 'paused' : progress.status;
  if (!progress.stage) return { status, at: '' };
  if (status !== 'running') return { status, at: ` at stage ${progress.stage}` };
  const index = progress.stages.findIndex((s) => s.name === progress.stage);
  return { status, at: `: stage ${progress.stage} (${index + 1} of ${progress.stages.length})` };
}

/** The current details of a run whose config failed to parse: nothing ran; the failure lists every problem. */
export function invalidConfigDetails(issues: ConfigIssue[]): string {
  const fields = issues.map((i) => i.field);
  const shown = fields.slice(0, 6).join(', ') + (fields.length > 6 ? ` and ${fields.length - 6} more` : '');
  return fitted(
    [
      '**invalid config**: nothing ran',
      plain(`${issues.length === 1 ? '1 field is' : `${issues.length} fields are`} wrong: ${shown}`),
      "the run's failure (History tab) says what is wrong with each",
    ].join('  \n'),
  );
}

/** "report: `runs/…/report.html`" (nothing when there is no report). */
export function reportNote(uri: string): string {
  return uri ? `report: ${code(uri)}` : '';
}

/** A message (a failure's reason, the gate's verdict) on one line, at most 200 characters, shown as it is. */
export function messageNote(message: string): string {
  const line = message.replace(/\s+/g, ' ').trim();
  return plain(line.length > 200 ? `${line.slice(0, 199)}…` : line);
}

function training(stage: { lora: { r: number; alpha: number }; training: PipelineConfig['sft']['training'] }): string {
  const t = stage.training;
  const length = t.maxSteps ? `${t.maxSteps} steps` : `${t.numEpochs} epoch${t.numEpochs === 1 ? '' : 's'}`;
  return `LoRA r ${stage.lora.r}, alpha ${stage.lora.alpha} · learning rate ${t.learningRate} · ${length} · batch ${t.microBatchSize} × ${t.gradientAccumulationSteps}`;
}

function sources(dataset: PipelineConfig['dataset']): string {
  const listed = dataset.sources.map((s) => `${code(s.uri)}${s.split ? ` (${plain(s.split)})` : ''}`).join(', ');
  return `${listed}${dataset.maxRows ? `, at most ${dataset.maxRows} rows` : ''}`;
}

/** "HuggingFaceTB/SmolVLM-Instruct" → "SmolVLM-Instruct"; a local folder → its name. */
function modelLabel(id: string): string {
  return lastSegment(id);
}

/**
 * "HuggingFaceM4/ChartQA" → "ChartQA"; a file names its folder ("data/shape_colour/data.jsonl" → "shape_colour");
 * more sources add "+ N more".
 */
function datasetLabel(dataset: PipelineConfig['dataset']): string {
  const [first, ...rest] = dataset.sources;
  const segments = (first?.uri ?? '').replace(/\/+$/, '').split('/');
  const name = segments.at(-1) ?? '';
  const isFile = /\.[a-z0-9]{2,8}$/i.test(name);
  const label = isFile && segments.length > 1 ? segments.at(-2)! : name.replace(/\.[a-z0-9]{2,8}$/i, '');
  return `${label}${rest.length ? ` + ${rest.length} more` : ''}`;
}

function lastSegment(uri: string): string {
  return uri.replace(/\/+$/, '').split('/').at(-1) ?? uri;
}

/** Free text as markdown that shows it as it is: specials escaped, no fractions. */
export function plain(text: string): string {
  return text
    .replace(/\s+/g, ' ')
    .replace(/[\\`*_[\]<>#|~]/g, (c) => `\\${c}`)
    .replace(/(\d)\/(?=\d)/g, '$1 / ');
}

/** A path or id as code (the UI's markdown makes no fractions inside code). */
function code(text: string): string {
  return `\`${text.replace(/`/g, "'")}\``;
}

/**
 * The UI measures the frame of a details text about one line short; a last line holding only a no-break space
 * (which markdown keeps, unlike a plain space) is the one it cuts.
 */
function fitted(markdown: string): string {
  return `${markdown}\n\n\u00a0`;
}
