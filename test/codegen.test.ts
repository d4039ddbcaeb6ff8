/** `npm run gen` is deterministic and the committed generated code is what the protos produce. */
import { execa } from 'execa';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../src/paths.js';
import { tempDir } from './helpers.js';

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (name === '__pycache__') return [];
    return statSync(full).isDirectory() ? files(full).map((f) => path.join(name, f)) : [name];
  });
}

describe('code generation', () => {
  it('regenerates exactly the committed TS and Python code', async () => {
    const out = tempDir('gen');
    await execa('bash', [path.join(projectRoot, 'scripts', 'gen.sh'), out], { cwd: projectRoot });
    for (const dir of ['src/gen', 'python-worker/gen']) {
      const committed = files(path.join(projectRoot, dir)).sort();
      expect(files(path.join(out, dir)).sort()).toEqual(committed);
      for (const file of committed) {
        const fresh = readFileSync(path.join(out, dir, file), 'utf8');
        expect(fresh, `${dir}/${file} is stale: run npm run gen`).toBe(
          readFileSync(path.join(projectRoot, dir, file), 'utf8'),
        );
      }
    }
  });
});
