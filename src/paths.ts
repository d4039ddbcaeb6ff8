/** Where the project keeps its tools and state; every path is absolute and derived from the repo root. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The Temporal CLI built by scripts/setup.sh (go install ...cli@v1.5.1). */
export const temporalCli = process.env.VLMFLOW_TEMPORAL_CLI ?? path.join(projectRoot, '.tools', 'bin', 'temporal');

/** The Python worker's virtual environment made by scripts/setup.sh. */
export const workerPython =
  process.env.VLMFLOW_WORKER_PYTHON ?? path.join(projectRoot, 'python-worker', '.venv', 'bin', 'python');

/** Mutable local state: the dev server's SQLite file, artifacts, logs. Ignored by git. */
export const stateDir = process.env.VLMFLOW_STATE_DIR ?? path.join(projectRoot, '.state');
