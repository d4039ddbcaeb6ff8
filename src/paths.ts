/** Where the project keeps its tools and state; every path is absolute and derived from the repo root. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The Temporal CLI built by scripts/setup.sh (go install ...cli@v1.5.1). */
export const temporalCli = process.env.VLMFLOW_TEMPORAL_CLI ?? path.join(projectRoot, '.tools', 'bin', 'temporal');

/**
 * The Temporal server v1.29.1 and its SQL schema tool, built by scripts/setup.sh (go install), with the release's
 * SQL schema: what the cluster tests run (src/stack/temporal-cluster.ts).
 */
const serverTools = process.env.VLMFLOW_TEMPORAL_SERVER_DIR ?? path.join(projectRoot, '.tools', 'temporal-server');
export const temporalServer = {
  server: path.join(serverTools, 'bin', 'server'),
  sqlTool: path.join(serverTools, 'bin', 'sql'),
  schema: path.join(serverTools, 'schema'),
};

/** The Python worker's virtual environment made by scripts/setup.sh. */
export const workerPython =
  process.env.VLMFLOW_WORKER_PYTHON ?? path.join(projectRoot, 'python-worker', '.venv', 'bin', 'python');

/** Mutable local state: the dev server's SQLite file, artifacts, logs. Ignored by git. */
export const stateDir = process.env.VLMFLOW_STATE_DIR ?? path.join(projectRoot, '.state');
