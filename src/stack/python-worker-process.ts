/**
 * Starts the Python gRPC worker as a child process (execa) on a given or free port and waits for its
 * 'listening' line. Used by the CLI's local stack and by tests that need a real worker.
 */
import { execa, type ResultPromise } from 'execa';
import { createInterface } from 'node:readline';
import { workerPython } from '../paths.js';
import { logger } from '../logger.js';

export interface PythonWorkerOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  artifactRoot: string;
  dataRoots?: string[];
  /** Address to bind; loopback by default. Any other address needs `tls` and `token`, or `insecure`. */
  host?: string;
  /** Serve TLS with these PEM files; `clientCa` makes client certificates mandatory (mutual TLS). */
  tls?: { cert: string; key: string; clientCa?: string };
  /** The shared token every call must carry (passed through the environment, never argv). */
  token?: string;
  /** Allow a non-loopback `host` without TLS and a token. */
  insecure?: boolean;
  /** host:port of its Prometheus endpoint (`--metrics-address`; port 0 picks a free one); unset serves none. */
  metricsAddress?: string;
  /** Extra environment for the worker (e.g. HF_HUB_OFFLINE). */
  env?: Record<string, string>;
  startTimeoutMs?: number;
}

export interface PythonWorker {
  address: string;
  port: number;
  pid: number;
  /** host:port its /metrics endpoint is bound to (from its 'listening' line), when it serves one. */
  metricsAddress: string | undefined;
  process: ResultPromise;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

export async function startPythonWorker(opts: PythonWorkerOptions): Promise<PythonWorker> {
  const args = [
    '-m',
    'vlmflow_worker',
    'serve',
    '--port',
    String(opts.port ?? 0),
    '--artifact-root',
    opts.artifactRoot,
  ];
  for (const root of opts.dataRoots ?? []) args.push('--data-root', root);
  if (opts.host) args.push('--host', opts.host);
  if (opts.tls) args.push('--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key);
  if (opts.tls?.clientCa) args.push('--tls-client-ca', opts.tls.clientCa);
  if (opts.insecure) args.push('--insecure');
  if (opts.metricsAddress) args.push('--metrics-address', opts.metricsAddress);
  const child = execa(workerPython, args, {
    env: { PYTHONUNBUFFERED: '1', ...(opts.token ? { VLMFLOW_WORKER_TOKEN: opts.token } : {}), ...opts.env },
    stdout: 'inherit',
    stderr: 'pipe',
    reject: false,
    forceKillAfterDelay: false,
  });
  const log = logger.child({ component: 'python-worker', pid: child.pid });
  const listening = await new Promise<{ port: number; metricsAddress: string | undefined }>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the Python worker did not start listening within ${opts.startTimeoutMs ?? 120_000} ms`)),
      opts.startTimeoutMs ?? 120_000,
    );
    const lines = createInterface({ input: child.stderr });
    let tail: string[] = [];
    lines.on('line', (line) => {
      let entry: Record<string, unknown> | undefined;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        tail = [...tail.slice(-20), line];
      }
      if (entry?.msg === 'listening') {
        clearTimeout(timer);
        resolve({
          port: Number(entry.port),
          metricsAddress: typeof entry.metrics_address === 'string' ? entry.metrics_address : undefined,
        });
      }
      // Relay the worker's own JSON lines so one stream carries both sides' logs.
      if (entry) log.debug(entry, 'worker log');
    });
    void child.then((result) => {
      clearTimeout(timer);
      reject(
        new Error(
          `the Python worker exited (code ${result.exitCode ?? result.signal}) before listening:\n${tail.join('\n')}`,
        ),
      );
    });
  });
  const { port, metricsAddress } = listening;
  return {
    address: `${dialHost(opts.host)}:${port}`,
    port,
    pid: child.pid!,
    metricsAddress,
    process: child,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await child;
      clearTimeout(timer);
    },
  };
}

/** Where to reach a worker bound to `host`: loopback for the default and wildcard binds, else the host itself. */
function dialHost(host: string | undefined): string {
  if (!host || host === '0.0.0.0' || host === '::' || host === '[::]') return '127.0.0.1';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}
