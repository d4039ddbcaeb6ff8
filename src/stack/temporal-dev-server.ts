/**
 * Starts the Temporal CLI's dev server (built by scripts/setup.sh) with a persistent SQLite file, the
 * Web UI, and the project's search attributes, then waits until its frontend answers.
 */
import { Connection } from '@temporalio/client';
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { temporalCli } from '../paths.js';
import { searchAttributes } from '../config/search-attributes.js';

export interface DevServerOptions {
  stateDir: string;
  port: number;
  uiPort: number;
  namespace?: string;
  readyTimeoutMs?: number;
  /**
   * Dynamic config, e.g. { 'limit.historyCount.suggestContinueAsNew': 40 } to see continue-as-new in a short
   * test (the server's own settings, passed as --dynamic-config-value).
   */
  dynamicConfig?: Record<string, string | number | boolean>;
}

export interface DevServer {
  address: string;
  uiUrl: string;
  process: ResultPromise;
  stop(): Promise<void>;
}

/** The flags that register the project's search attributes at start-dev. */
export function searchAttributeFlags(): string[] {
  return searchAttributes.flatMap((key) => ['--search-attribute', `${key.name}=${temporalTypeName(key.type)}`]);
}

function temporalTypeName(type: string): string {
  // SearchAttributeType values are upper snake ('KEYWORD'); the CLI wants 'Keyword'.
  const names: Record<string, string> = {
    KEYWORD: 'Keyword',
    TEXT: 'Text',
    INT: 'Int',
    DOUBLE: 'Double',
    BOOL: 'Bool',
    DATETIME: 'Datetime',
    KEYWORD_LIST: 'KeywordList',
  };
  const name = names[type];
  if (!name) throw new Error(`unknown search attribute type ${type}`);
  return name;
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  if (!existsSync(temporalCli)) {
    throw new Error(`the Temporal CLI is missing at ${temporalCli}: run \`npm run setup\` to build it`);
  }
  mkdirSync(opts.stateDir, { recursive: true });
  const namespace = opts.namespace ?? 'default';
  const args = [
    'server',
    'start-dev',
    '--db-filename',
    path.join(opts.stateDir, 'temporal.db'),
    '--ip',
    '127.0.0.1',
    '--port',
    String(opts.port),
    '--ui-port',
    String(opts.uiPort),
    '--log-level',
    'error',
    ...(namespace === 'default' ? [] : ['--namespace', namespace]),
    ...searchAttributeFlags(),
    ...Object.entries(opts.dynamicConfig ?? {}).flatMap(([key, value]) => [
      '--dynamic-config-value',
      `${key}=${JSON.stringify(value)}`,
    ]),
  ];
  const child = execa(temporalCli, args, { reject: false, stdout: 'ignore', stderr: 'pipe', all: false });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const address = `127.0.0.1:${opts.port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 60_000);
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`the Temporal dev server exited with code ${child.exitCode}:\n${stderr}`);
    }
    try {
      const connection = await Connection.connect({ address, connectTimeout: 1000 });
      await connection.workflowService.getSystemInfo({});
      await connection.close();
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`the Temporal dev server did not answer on ${address}: ${String(err)}\n${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  return {
    address,
    uiUrl: `http://127.0.0.1:${opts.uiPort}`,
    process: child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await child;
      clearTimeout(timer);
    },
  };
}
