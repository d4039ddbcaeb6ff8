/** The example configs in examples/ stay valid as the schema changes. */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readConfigFile } from '../src/cli/config-file.js';

const dir = path.join(import.meta.dirname, '..', 'examples');

describe('example pipeline configs', () => {
  const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f));

  it('includes the offline demo, the SmolVLM recipes (QLoRA, SFT+DPO, GRPO) and the SmolVLM2 video and Qwen2.5-VL recipes', () => {
    expect(files).toEqual(
      expect.arrayContaining([
        'offline-demo.yaml',
        'smolvlm-chartqa-qlora.yaml',
        'smolvlm-sft-dpo-rlaif-v.yaml',
        'smolvlm-chartqa-grpo.yaml',
        'smolvlm2-2.2b-video-sft.yaml',
        'qwen2.5-vl-3b-chartqa-qlora.yaml',
      ]),
    );
  });

  it('runs GRPO on ChartQA after SFT with numeric rewards, groups that fit the batch', () => {
    const { config } = readConfigFile(path.join(dir, 'smolvlm-chartqa-grpo.yaml'));
    expect(config.grpo?.from).toBe('sft');
    expect(config.grpo?.rewards.map((r) => r.kind)).toEqual(['relaxed_accuracy', 'numeric']);
    expect(config.grpo?.rewards[1]).toMatchObject({ relativeTolerance: 0.05, name: 'within_5pct', weight: 0.5 });
    const training = config.grpo!.training;
    expect((training.microBatchSize * training.gradientAccumulationSteps) % config.grpo!.numGenerations).toBe(0);
  });

  it.each(files)('%s parses with the pipeline schema', (file) => {
    const { config } = readConfigFile(path.join(dir, file));
    expect(config.dataset.sources.length).toBeGreaterThan(0);
  });
});
