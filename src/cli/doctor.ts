/**
 * `vlmflow doctor`: checks the pieces a run needs and says, for each missing one, what to do. Exit code 0
 * when nothing required is missing.
 */
import { existsSync } from 'node:fs';
import { loadEnv, type Env } from '../env.js';
import { temporalCli, workerPython } from '../paths.js';
import { searchAttributes } from '../config/search-attributes.js';
import { connectTemporalClient, temporalTarget } from '../stack/temporal-connection.js';
import { createPythonWorkerClient, health, pythonWorkerClientSecurity } from '../python-worker-client.js';
import { ExitCode } from './exit-codes.js';

interface Check {
  ok: boolean;
  what: string;
  /** What to do when not ok. */
  hint?: string;
  /** Shown when ok. */
  note?: string;
  /** A failure that does not stop runs. */
  optional?: boolean;
}

export async function doctor(): Promise<number> {
  let env: Env;
  try {
    env = loadEnv();
  } catch (err) {
    console.log(`✗ environment: ${(err as Error).message}`);
    return ExitCode.failed;
  }
  const checks: Check[] = [];
  const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
  checks.push({
    ok: major > 20 || (major === 20 && minor >= 11),
    what: `Node.js ${process.versions.node}`,
    hint: 'install Node.js 20.11 or newer',
  });
  if (!env.TEMPORAL_ADDRESS) {
    checks.push({
      ok: existsSync(temporalCli),
      what: `Temporal CLI at ${temporalCli}`,
      hint: 'run `npm run setup` to build it',
    });
  }
  if (!env.VLMFLOW_WORKER_ADDRESS) {
    checks.push({
      ok: existsSync(workerPython),
      what: `Python worker environment at ${workerPython}`,
      hint: 'run `npm run setup`',
    });
  }
  checks.push(...(await temporalChecks(env)));
  checks.push(...(await workerChecks(env)));

  for (const c of checks) {
    const mark = c.ok ? '✓' : c.optional ? '!' : '✗';
    const extra = c.ok ? (c.note ? ` (${c.note})` : '') : c.hint ? ` — ${c.hint}` : '';
    console.log(`${mark} ${c.what}${extra}`);
  }
  const failed = checks.filter((c) => !c.ok && !c.optional);
  console.log(failed.length ? `${failed.length} problem(s) to fix.` : 'Everything a run needs is there.');
  return failed.length ? ExitCode.failed : ExitCode.ok;
}

async function temporalChecks(env: Env): Promise<Check[]> {
  const target = temporalTarget(env, `127.0.0.1:${env.TEMPORAL_DEV_PORT}`);
  const start = env.TEMPORAL_ADDRESS
    ? 'check TEMPORAL_ADDRESS and its TLS settings'
    : 'start it with `vlmflow dev` (`vlmflow demo` starts its own)';
  let connection;
  try {
    connection = await connectTemporalClient(target);
    await connection.workflowService.getSystemInfo({});
  } catch {
    await connection?.close();
    return [
      {
        ok: false,
        what: `Temporal at ${target.address}`,
        hint: `nothing answers; ${start}`,
      },
    ];
  }
  try {
    const checks: Check[] = [{ ok: true, what: `Temporal at ${target.address} (namespace ${target.namespace})` }];
    const registered = await connection.operatorService.listSearchAttributes({ namespace: target.namespace });
    const missing = searchAttributes.filter((k) => !(k.name in registered.customAttributes)).map((k) => k.name);
    checks.push({
      ok: missing.length === 0,
      what: 'search attributes VlmflowModel, VlmflowDataset, VlmflowStage, VlmflowStatus',
      hint: `missing ${missing.join(', ')}: \`temporal operator search-attribute create --name <name> --type Keyword\` for each`,
    });
    for (const [queue, role] of [
      [env.VLMFLOW_WORKFLOW_TASK_QUEUE, 'workflow'],
      [env.VLMFLOW_GPU_TASK_QUEUE, 'GPU activity'],
    ] as const) {
      const described = await connection.workflowService.describeTaskQueue({
        namespace: target.namespace,
        taskQueue: { name: queue },
        taskQueueType: role === 'workflow' ? 1 : 2,
      });
      const pollers = described.pollers?.length ?? 0;
      checks.push({
        ok: pollers > 0,
        what: `${role} workers polling ${queue}: ${pollers}`,
        hint: 'start them with `vlmflow dev` (local) or `vlmflow worker` (deployment)',
      });
    }
    return checks;
  } finally {
    await connection.close();
  }
}

async function workerChecks(env: Env): Promise<Check[]> {
  if (!env.VLMFLOW_WORKER_ADDRESS) {
    return [
      {
        ok: true,
        what: 'Python worker',
        note: '`vlmflow dev` starts one; set VLMFLOW_WORKER_ADDRESS to check a running one',
      },
    ];
  }
  const client = createPythonWorkerClient(env.VLMFLOW_WORKER_ADDRESS, pythonWorkerClientSecurity(env));
  try {
    const h = await health(client, 10_000);
    const gpus = h.gpus.map((g) => `${g.name} ${(g.totalMemoryBytes / 2 ** 30).toFixed(0)} GiB`).join(', ');
    return [
      {
        ok: true,
        what: `Python worker ${h.workerId}: ${h.device}${gpus ? ` (${gpus})` : ''}, ${h.jobCapacity} job slot(s), ${h.jobsRunning} running`,
      },
      {
        ok: h.device === 'cuda',
        what: 'CUDA',
        hint: 'not available: training runs on CPU (tiny model only); 4-bit / 8-bit quantization needs CUDA',
        optional: true,
      },
    ];
  } catch (err) {
    return [
      {
        ok: false,
        what: `Python worker at ${env.VLMFLOW_WORKER_ADDRESS}`,
        hint: `it does not answer Health (${(err as Error).message.split('\n')[0]})`,
      },
    ];
  } finally {
    client.close();
  }
}
