/** The example configs in examples/ stay valid as the schema changes. */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readConfigFile } from '../src/cli/config-file.js';

const dir = path.join(import.meta.dirname, '..', 'examples');

describe('example pipeline configs', () => {
  const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f));

  it('includes the offline demo, the two SmolVLM recipes and the SmolVLM2 video and Qwen2.5-VL recipes', () => {
    expect(files).toEqual(
      expect.arrayContaining([
        'offline-demo.yaml',
        'smolvlm-chartqa-qlora.yaml',
        'smolvlm-sft-dpo-rlaif-v.yaml',
        'smolvlm2-2.2b-video-sft.yaml',
        'qwen2.5-vl-3b-chartqa-qlora.yaml',
      ]),
    );
  });

  it.each(files)('%s parses with the pipeline schema', (file) => {
    const { config } = readConfigFile(path.join(dir, file));
    expect(config.dataset.sources.length).toBeGreaterThan(0);
  });
});
