/** What every benchmark result records beside its numbers: machine, versions, git commit, date. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectRoot } from '../src/paths.js';

export function machineInfo() {
  const pkg = (name: string) =>
    (
      JSON.parse(readFileSync(path.join(projectRoot, 'node_modules', name, 'package.json'), 'utf8')) as {
        version: string;
      }
    ).version;
  const git = (...args: string[]) => execFileSync('git', args, { cwd: projectRoot, encoding: 'utf8' }).trim();
  return {
    date: new Date().toISOString(),
    gitCommit: git('rev-parse', 'HEAD'),
    gitDirty: git('status', '--porcelain').length > 0,
    host: os.hostname(),
    cpus: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'unknown'}`,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    temporalSdk: pkg('@temporalio/worker'),
  };
}

/** Writes `bench/results/<name>-<timestamp>.json` and `<name>-latest.json`; returns the first path. */
export function writeResult(name: string, result: Record<string, unknown>): string {
  const dir = path.join(projectRoot, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const body = JSON.stringify({ benchmark: name, machine: machineInfo(), ...result }, null, 2) + '\n';
  const file = path.join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, body);
  writeFileSync(path.join(dir, `${name}-latest.json`), body);
  return file;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}
