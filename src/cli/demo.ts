/**
 * `vlmflow demo`: the README's main command. Starts the local stack, runs a workflow through Temporal that
 * asks the Python worker for its Health, prints it with the Web UI address, then stops the stack.
 */
import { loadEnv } from '../config.js';
import { startLocalStack } from '../local-stack.js';
import { healthCheck } from '../../workflows/index.js';

export async function demo(opts: { keep: boolean }): Promise<number> {
  const env = loadEnv();
  const stack = await startLocalStack(env);
  try {
    const health = await stack.client.workflow.execute(healthCheck, {
      taskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      workflowId: `health-check-${Date.now()}`,
      args: [{ gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE }],
    });
    const gpus = health.gpus.map((g) => `${g.name} (${(g.totalMemoryBytes / 2 ** 30).toFixed(0)} GiB)`).join(', ');
    console.log(`Python worker ${health.workerId}`);
    console.log(`  device:       ${health.device}${gpus ? ` — ${gpus}` : ''}`);
    console.log(`  job capacity: ${health.jobCapacity} (running: ${health.jobsRunning})`);
    console.log(
      `  versions:     ${Object.entries(health.versions)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
    console.log(`Temporal:       ${stack.temporalAddress} (namespace ${env.TEMPORAL_NAMESPACE})`);
    if (stack.uiUrl) console.log(`Temporal UI:    ${stack.uiUrl}`);
    if (opts.keep) {
      console.log('Stack running; Ctrl-C stops it.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
    return 0;
  } finally {
    await stack.shutdown();
  }
}
