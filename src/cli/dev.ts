/**
 * `vlmflow dev`: the local stack for development — the Temporal dev server (persistent SQLite, Web UI), the
 * Python worker and the TS workers — until Ctrl-C. Other commands (`run`, `status`, ...) talk to it.
 */
import path from 'node:path';
import { loadEnv } from '../env.js';
import { startLocalStack } from '../stack/local-stack.js';
import { stateDir } from '../paths.js';
import { buildDemoAssets } from './demo-assets.js';
import { ExitCode } from './exit-codes.js';
import { quietLogs } from './quiet-logs.js';

export async function dev(opts: { demoAssets: boolean }): Promise<number> {
  quietLogs();
  const env = loadEnv();
  const stack = await startLocalStack(env);
  try {
    const artifactRoot = env.VLMFLOW_ARTIFACT_ROOT ?? path.join(stateDir, 'artifacts');
    if (opts.demoAssets && !env.VLMFLOW_WORKER_ADDRESS) await buildDemoAssets(artifactRoot);
    console.log(`Temporal:     ${stack.temporalAddress} (namespace ${env.TEMPORAL_NAMESPACE})`);
    if (stack.uiUrl) console.log(`Temporal UI:  ${stack.uiUrl}`);
    console.log(
      `Task queues:  workflows on ${env.VLMFLOW_WORKFLOW_TASK_QUEUE}, GPU activities on ${env.VLMFLOW_GPU_TASK_QUEUE}`,
    );
    if (!env.VLMFLOW_WORKER_ADDRESS) console.log(`Artifacts:    ${artifactRoot}`);
    console.log('Ready: `vlmflow run examples/offline-demo.yaml` in another terminal. Ctrl-C stops the stack.');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    console.log('Stopping...');
    return ExitCode.ok;
  } finally {
    await stack.shutdown();
  }
}
