/**
 * `vlmflow demo`: the README's main command. Starts the local stack (Temporal dev server with its UI, the
 * Python worker, the TS workers), checks the worker through a workflow, builds the offline demo's tiny model
 * and synthetic data, then runs examples/offline-demo.yaml end to end (prepare → SFT → evaluate → gate →
 * export) with a live progress bar, and prints where the HTML report is.
 */
import path from 'node:path';
import { healthCheck } from '../../workflows/index.js';
import { fineTunePipeline } from '../../workflows/fine-tune-pipeline.js';
import { startMetadata } from '../../workflows/run-story.js';
import { loadEnv } from '../env.js';
import type { PipelineConfigInput } from '../config/pipeline-config.js';
import { startLocalStack } from '../stack/local-stack.js';
import { projectRoot, stateDir } from '../paths.js';
import { readConfigFile } from './config-file.js';
import { buildDemoAssets } from './demo-assets.js';
import { ExitCode } from './exit-codes.js';
import { quietLogs } from './quiet-logs.js';
import { followPipeline } from './follow.js';
import { newRunId } from './run.js';

export const demoConfigFile = path.join(projectRoot, 'examples', 'offline-demo.yaml');

export async function demo(opts: { keep: boolean }): Promise<number> {
  quietLogs();
  const env = loadEnv();
  const { raw, config } = readConfigFile(demoConfigFile);
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

    let input = raw;
    if (env.VLMFLOW_WORKER_ADDRESS) {
      console.log('Using the Python worker at VLMFLOW_WORKER_ADDRESS: its artifact store must hold the demo assets.');
    } else {
      console.log('Building the tiny model and the synthetic shape-colour task (once)...');
      const artifactRoot = path.resolve(env.VLMFLOW_ARTIFACT_ROOT ?? path.join(stateDir, 'artifacts'));
      await buildDemoAssets(artifactRoot);
      input = withAbsolutePaths(raw, artifactRoot);
    }

    const workflowId = newRunId(config.name);
    const handle = await stack.client.workflow.start(fineTunePipeline, {
      taskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      workflowId,
      args: [input, { gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE }],
      ...startMetadata(config),
    });
    console.log(`Running ${workflowId} (${path.relative(process.cwd(), demoConfigFile)}):`);
    if (stack.uiUrl)
      console.log(`  watch it at ${stack.uiUrl}/namespaces/${env.TEMPORAL_NAMESPACE}/workflows/${workflowId}`);
    const code = await followPipeline(handle);
    if (code === ExitCode.ok) console.log('Open the report in a browser to compare the base and the tuned model.');

    if (opts.keep) {
      console.log('Stack running; Ctrl-C stops it.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
    return code;
  } finally {
    await stack.shutdown();
  }
}

/** The example's paths are relative to the artifact root; spell them out for every job kind. */
function withAbsolutePaths(raw: unknown, artifactRoot: string): unknown {
  const config = raw as PipelineConfigInput;
  return {
    ...config,
    model: { ...config.model, id: path.join(artifactRoot, config.model?.id ?? '') },
    dataset: {
      ...config.dataset,
      sources: config.dataset.sources.map((s) => ({ ...s, uri: path.join(artifactRoot, s.uri) })),
    },
  };
}
