/**
 * What a run tells in the Temporal UI (workflows/run-story.ts), for the example configs and for every state a run
 * ends in. test/temporal-ui.test.ts checks the same texts in a real browser.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readConfigFile } from '../src/cli/config-file.js';
import { pipelineConfigSchema } from '../src/config/pipeline-config.js';
import { projectRoot } from '../src/paths.js';
import type { PipelineProgress, StageSummary } from '../workflows/definitions.js';
import {
  currentDetails,
  messageNote,
  invalidConfigDetails,
  reportNote,
  runDetails,
  runSummary,
  stageTitle,
  statusLine,
} from '../workflows/run-story.js';

const example = (name: string) => readConfigFile(path.join(projectRoot, 'examples', name)).config;

const stages = (...entries: [StageSummary['name'], StageSummary['status']][]): StageSummary[] =>
  entries.map(([name, status]) => ({ name, status }));

/** The lines the UI shows of a markdown text (hard breaks and list items), without the blank last one. */
const shownLines = (markdown: string) =>
  markdown
    .split(/ {2}\n|\n/)
    .map((line) => line.trim())
    .filter((line) => line && line !== '\u00a0');

describe('the story a run tells in the Temporal UI', () => {
  it('sums a run up in one line: what it trains, on which model, with which data', () => {
    expect(runSummary(example('smolvlm-chartqa-qlora.yaml'))).toBe('SFT · SmolVLM-Instruct · ChartQA');
    expect(runSummary(example('smolvlm-sft-dpo-rlaif-v.yaml'))).toBe(
      'SFT + DPO · SmolVLM-Instruct · llava-instruct-mix-vsft, RLAIF-V-Dataset',
    );
    // A local file names its folder; more sources are counted.
    expect(runSummary(example('offline-demo.yaml'))).toBe('SFT · tiny-idefics3 · shape\\_colour');
    const two = pipelineConfigSchema.parse({
      model: { id: '/models/my_model/' },
      dataset: { sources: [{ uri: 'HuggingFaceM4/ChartQA' }, { uri: 'b.jsonl' }] },
    });
    expect(runSummary(two)).toBe('SFT · my\\_model · ChartQA + 1 more');
  });

  it('details the config in one line per part, ending in a blank line the UI may cut', () => {
    const details = runDetails(example('smolvlm-sft-dpo-rlaif-v.yaml'));
    expect(shownLines(details)).toEqual([
      '- **model** `HuggingFaceTB/SmolVLM-Instruct` (LoRA, dtype bfloat16)',
      '- **data** `HuggingFaceH4/llava-instruct-mix-vsft` (train), at most 20000 rows',
      '- **SFT** LoRA r 16, alpha 32 · learning rate 0.0001 · 1 epoch · batch 4 × 4',
      '- **DPO** on `openbmb/RLAIF-V-Dataset` (train), at most 10000 rows · beta 0.1, sigmoid · LoRA r 16, alpha 32 · learning rate 0.000005 · 1 epoch · batch 2 × 8',
      '- **evaluate** on the preference split · the metrics that fit the data · at most 500 rows',
      '- **gate** preference\\_accuracy must beat the base by 0, else the run is flagged',
      '- **export** the merged model',
    ]);
    expect(details.endsWith('\n\n\u00a0')).toBe(true);
    expect(shownLines(runDetails(example('smolvlm-chartqa-qlora.yaml')))[0]).toBe(
      '- **model** `HuggingFaceTB/SmolVLM-Instruct` (QLoRA nf4, dtype bfloat16)',
    );
  });

  it('names each stage for the timeline, telling SFT from DPO', () => {
    const config = example('smolvlm-sft-dpo-rlaif-v.yaml');
    expect(stageTitle('sft', config)).toBe('SFT training (LoRA)');
    expect(stageTitle('dpo', config)).toBe('DPO training on the SFT adapter');
    expect(stageTitle('prepare-preference', config)).toBe('prepare the DPO preference pairs (RLAIF-V-Dataset)');
    expect(stageTitle('evaluate', config)).toBe('evaluate base vs SFT vs DPO');
    expect(stageTitle('sft', example('smolvlm-chartqa-qlora.yaml'))).toBe('SFT training (QLoRA)');
  });

  it('tells a running stage, its place and where its numbers are, in four lines', () => {
    const progress: Pick<PipelineProgress, 'status' | 'stage' | 'stages'> = {
      status: 'running',
      stage: 'dpo',
      stages: stages(['prepare', 'completed'], ['sft', 'reused'], ['dpo', 'running'], ['evaluate', 'pending']),
    };
    const details = currentDetails(progress, { summary: 'SFT + DPO · tiny · shapes', paused: false });
    expect(shownLines(details)).toEqual([
      '**SFT + DPO · tiny · shapes**',
      '**running**: stage dpo (3 of 4)',
      '✓ prepare · ✓ sft · ▶ dpo · evaluate',
      'step, loss and ETA: the Pending Activities tab',
    ]);
    expect(statusLine(progress, false)).toBe('running: stage dpo (3 of 4)');
    // A message of the running stage (the out-of-memory retry) takes the hint's place.
    const retrying = {
      ...progress,
      stages: progress.stages.map((s) =>
        s.name === 'dpo' ? { ...s, message: 'out of memory; retrying with micro-batch 2' } : s,
      ),
    };
    expect(shownLines(currentDetails(retrying, { summary: 's', paused: false })).at(-1)).toBe(
      'out of memory; retrying with micro-batch 2',
    );
    expect(statusLine(progress, true)).toBe('paused at stage dpo');
    expect(shownLines(currentDetails(progress, { summary: 's', paused: true })).slice(1)).toEqual([
      '**paused** at stage dpo',
      '✓ prepare · ✓ sft · ▶ dpo · evaluate',
      'the resume signal continues it from its checkpoint',
    ]);
  });

  it('ends in the final state: completed with the report, flagged, failed with the reason, cancelled', () => {
    const done = stages(['prepare', 'completed'], ['sft', 'completed'], ['evaluate', 'completed']);
    const completed = currentDetails(
      { status: 'completed', stage: null, stages: done },
      { summary: 's', paused: false, note: reportNote('runs/r-1/2/evaluate/report.html') },
    );
    expect(shownLines(completed).slice(1)).toEqual([
      '**completed**',
      '✓ prepare · ✓ sft · ✓ evaluate',
      'report: `runs/r-1/2/evaluate/report.html`',
    ]);
    const flagged = currentDetails(
      { status: 'completed', stage: null, stages: done },
      { summary: 's', paused: false, gateFlagged: true },
    );
    expect(shownLines(flagged)[1]).toBe('**completed, gate flagged**');

    const failed = currentDetails(
      { status: 'failed', stage: 'sft', stages: stages(['prepare', 'completed'], ['sft', 'failed']) },
      { summary: 's', paused: false, note: messageNote('loss is NaN at step 500/1500;\n  lower *learning_rate*') },
    );
    // A slash between digits would render as a stacked fraction; markdown specials show as typed.
    expect(shownLines(failed).slice(1)).toEqual([
      '**failed** at stage sft',
      '✓ prepare · ✗ sft',
      'loss is NaN at step 500 / 1500; lower \\*learning\\_rate\\*',
    ]);
    expect(messageNote('x'.repeat(500))).toHaveLength(200);

    const cancelled = currentDetails(
      { status: 'cancelled', stage: 'sft', stages: stages(['prepare', 'completed'], ['sft', 'cancelled']) },
      { summary: 's', paused: false },
    );
    expect(shownLines(cancelled).slice(1)).toEqual(['**cancelled** at stage sft', '✓ prepare · ■ sft']);
  });

  it('names the bad fields of an invalid config and says that nothing ran', () => {
    const fields = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].map((field) => ({ field, problem: 'wrong' }));
    expect(shownLines(invalidConfigDetails(fields))).toEqual([
      '**invalid config**: nothing ran',
      '8 fields are wrong: a, b, c, d, e, f and 2 more',
      "the run's failure (History tab) says what is wrong with each",
    ]);
    expect(shownLines(invalidConfigDetails([{ field: 'model.id', problem: 'x' }]))[1]).toBe(
      '1 field is wrong: model.id',
    );
  });
});
