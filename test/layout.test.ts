/**
 * README's layout table matches the tree: every folder it names exists, every top-level folder and every folder of
 * `src/` and of the Python package is in it, and a "(files)" row names exactly the files that folder holds.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../src/paths.js';

const rows = readFileSync(path.join(projectRoot, 'README.md'), 'utf8')
  .split('\n')
  .filter((line) => line.startsWith('| `'))
  .map((line) => {
    const [, folders = '', holds = ''] = line.split('|').map((cell) => cell.trim());
    return { folders, holds };
  });

const named = rows.flatMap((row) => [...row.folders.matchAll(/`([^`]+\/)`/g)].map((m) => m[1]!));

function folders(dir: string): string[] {
  return readdirSync(path.join(projectRoot, dir), { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.startsWith('.') && e.name !== 'node_modules' && e.name !== '__pycache__')
    .filter((e) => !e.name.endsWith('.egg-info'))
    .map((e) => `${dir ? `${dir}/` : ''}${e.name}/`);
}

function files(dir: string, ext: string): string[] {
  return readdirSync(path.join(projectRoot, dir))
    .filter((name) => name.endsWith(ext) && name !== '__init__.py')
    .sort();
}

describe('README layout table', () => {
  it('names only folders that exist', () => {
    const missing = named.filter((dir) => !statSync(path.join(projectRoot, dir), { throwIfNoEntry: false }));
    expect(missing).toEqual([]);
  });

  it('names every top-level folder and every folder of src/ and of the Python package', () => {
    // A top-level folder counts as named when the table names it or a folder inside it (`src/gen/`).
    expect(folders('').filter((dir) => !named.some((n) => n.startsWith(dir)))).toEqual([]);
    expect(folders('src').filter((dir) => !named.includes(dir))).toEqual([]);
    expect(folders('python-worker/src/vlmflow_worker').filter((dir) => !named.includes(dir))).toEqual([]);
  });

  it('names exactly the files of each "(files)" row', () => {
    for (const [dir, ext] of [
      ['src', '.ts'],
      ['python-worker/src/vlmflow_worker', '.py'],
    ] as const) {
      const row = rows.find((r) => r.folders === `\`${dir}/\` (files)`);
      expect(row, `a "(files)" row for ${dir}/`).toBeDefined();
      const listed = [...row!.holds.matchAll(/`([\w.-]+\.(?:ts|py))`/g)].map((m) => m[1]!).sort();
      expect(listed).toEqual(files(dir, ext));
    }
  });
});
