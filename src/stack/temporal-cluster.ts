/**
 * A real Temporal cluster on PostgreSQL, as production runs it: the frontend, history, matching and worker
 * services as four processes of `temporal-server` v1.29.1 (built by scripts/setup.sh), their schema made with
 * Temporal's SQL tool from the same release, the `default` namespace and the project's search attributes
 * registered. The steps are those docker/temporal-setup.sh and docker/compose.yaml run with the official images.
 * Used by test/cluster.test.ts; each service can be killed and started again.
 */
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import proto from '@temporalio/proto'; // CommonJS: a default import under Node's ESM loader
import { execa, type ResultPromise } from 'execa';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { searchAttributes } from '../config/search-attributes.js';
import { temporalServer } from '../paths.js';
import { startPostgres, type Postgres } from './postgres.js';
import { freePort, isPortClash, lowFreePort } from './ports.js';

export const SERVICES = ['history', 'matching', 'frontend', 'worker'] as const;
const KEYWORD = proto.temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
export type ServiceName = (typeof SERVICES)[number];

export interface ClusterOptions {
  /** Holds PostgreSQL's data, the services' config and their logs. */
  dir: string;
  /** Dynamic config values, e.g. { 'limit.historyCount.suggestContinueAsNew': 40 }. */
  dynamicConfig?: Record<string, unknown>;
  readyTimeoutMs?: number;
}

export interface TemporalCluster {
  /** The frontend, host:port. */
  address: string;
  postgres: Postgres;
  /** SIGKILLs one service. */
  kill(service: ServiceName): Promise<void>;
  /** Starts a service that was killed (see `ready`). */
  start(service: ServiceName): void;
  /** Waits until the frontend answers. */
  ready(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts the cluster on free ports (membership ports below 32768: Temporal keeps them as smallint). A port taken by
 * another process before a service could bind it is retried, on new ports in a new folder, twice at most.
 */
export async function startTemporalCluster(opts: ClusterOptions): Promise<TemporalCluster> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await bootCluster({ ...opts, dir: path.join(opts.dir, `attempt-${attempt}`) });
    } catch (err) {
      if (attempt >= 3 || !isPortClash(err)) throw err;
    }
  }
}

async function bootCluster(opts: ClusterOptions): Promise<TemporalCluster> {
  const grpcPorts = await Promise.all(Array.from({ length: 5 }, () => freePort()));
  const membership = await Promise.all(SERVICES.map(() => lowFreePort()));
  // 0 frontend, 1 its membership, 2 history, 3 its membership, 4 matching, 5 its membership, 6 worker, 7 its, 8 HTTP
  const layout = [
    grpcPorts[0],
    membership[0],
    grpcPorts[1],
    membership[1],
    grpcPorts[2],
    membership[2],
    grpcPorts[3],
    membership[3],
    grpcPorts[4],
  ];
  const port = (i: number) => layout[i]!;
  const root = path.join(opts.dir, 'temporal');
  const logs = path.join(opts.dir, 'logs');
  mkdirSync(path.join(root, 'config'), { recursive: true });
  mkdirSync(logs, { recursive: true });

  // 1. PostgreSQL, and Temporal's two databases at the release's schema version.
  const postgres = await startPostgres(path.join(opts.dir, 'postgres'));
  const pgPort = postgres.port;
  const processes = new Map<ServiceName, ResultPromise>();
  try {
    for (const [database, schema] of [
      ['temporal', 'temporal'],
      ['temporal_visibility', 'visibility'],
    ] as const) {
      const tool = (...args: string[]) =>
        execa(temporalServer.sqlTool, [
          '--plugin',
          'postgres12',
          '--ep',
          '127.0.0.1',
          '-p',
          String(pgPort),
          '-u',
          postgres.user,
          '--pw',
          'unused',
          '--db',
          database,
          ...args,
        ]);
      await tool('create-database');
      await tool('setup-schema', '-v', '0.0');
      await tool('update-schema', '-d', path.join(temporalServer.schema, 'postgresql', 'v12', schema, 'versioned'));
    }

    // 2. The services' config (development.yaml) and dynamic config.
    const frontend = `127.0.0.1:${port(0)}`;
    const rpc = (grpc: number, membership: number, extra: Record<string, unknown> = {}) => ({
      rpc: { grpcPort: grpc, membershipPort: membership, bindOnLocalHost: true, ...extra },
    });
    const datastore = (database: string, maxConns: number) => ({
      sql: {
        pluginName: 'postgres12',
        databaseName: database,
        connectAddr: `127.0.0.1:${pgPort}`,
        connectProtocol: 'tcp',
        user: postgres.user,
        password: 'unused',
        maxConns,
        maxIdleConns: maxConns,
        maxConnLifetime: '1h',
      },
    });
    const dynamicConfigFile = path.join(root, 'config', 'dynamicconfig.yaml');
    writeFileSync(
      dynamicConfigFile,
      stringify(
        Object.fromEntries(
          Object.entries(opts.dynamicConfig ?? {}).map(([k, value]) => [k, [{ value, constraints: {} }]]),
        ),
      ),
    );
    writeFileSync(
      path.join(root, 'config', 'development.yaml'),
      stringify({
        log: { stdout: true, level: 'warn' },
        persistence: {
          defaultStore: 'postgres-default',
          visibilityStore: 'postgres-visibility',
          numHistoryShards: 4,
          datastores: {
            'postgres-default': datastore('temporal', 20),
            'postgres-visibility': datastore('temporal_visibility', 5),
          },
        },
        global: { membership: { maxJoinDuration: '30s', broadcastAddress: '127.0.0.1' } },
        services: {
          frontend: rpc(port(0), port(1), { httpPort: port(8) }),
          history: rpc(port(2), port(3)),
          matching: rpc(port(4), port(5)),
          worker: rpc(port(6), port(7)),
        },
        clusterMetadata: {
          enableGlobalNamespace: false,
          failoverVersionIncrement: 10,
          masterClusterName: 'active',
          currentClusterName: 'active',
          clusterInformation: {
            active: { enabled: true, initialFailoverVersion: 1, rpcName: 'frontend', rpcAddress: frontend },
          },
        },
        dcRedirectionPolicy: { policy: 'noop' },
        dynamicConfigClient: { filepath: dynamicConfigFile, pollInterval: '10s' },
      }),
    );

    // 3. The services, one process each. On a first boot they race to write the cluster's metadata, so history
    //    goes first and the others follow once its row is there.
    const startService = (service: ServiceName) => {
      const child = execa(
        temporalServer.server,
        [
          '--root',
          root,
          '--config',
          'config',
          '--env',
          'development',
          '--allow-no-auth',
          'start',
          '--service',
          service,
        ],
        {
          reject: false,
          stdout: { file: path.join(logs, `${service}.log`), append: true },
          stderr: { file: path.join(logs, `${service}.log`), append: true },
        },
      );
      processes.set(service, child);
    };
    const waitFor = async (what: string, ok: () => Promise<boolean>) => {
      const deadline = Date.now() + (opts.readyTimeoutMs ?? 120_000);
      for (;;) {
        if (await ok().catch(() => false)) return;
        for (const [service, child] of processes) {
          if (child.exitCode !== null) {
            const log = readFileSync(path.join(logs, `${service}.log`), 'utf8').slice(-2000);
            throw new Error(`Temporal ${service} exited (${child.exitCode}); logs in ${logs}:\n${log}`);
          }
        }
        if (Date.now() > deadline) throw new Error(`Temporal cluster: ${what} not reached; logs in ${logs}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    startService('history');
    await waitFor(
      'cluster metadata',
      async () => Number(await postgres.query('temporal', 'select count(*) from cluster_metadata_info')) > 0,
    );
    for (const service of SERVICES.filter((s) => s !== 'history')) startService(service);
    const frontendAnswers = async () => {
      const connection = await Connection.connect({ address: frontend, connectTimeout: 1000 });
      try {
        await connection.workflowService.getSystemInfo({});
        return true;
      } finally {
        await connection.close();
      }
    };
    await waitFor('the frontend', frontendAnswers);

    // 4. The namespace and the search attributes, as docker/temporal-setup.sh registers them.
    const connection = await Connection.connect({ address: frontend });
    try {
      await connection.workflowService
        .registerNamespace({ namespace: 'default', workflowExecutionRetentionPeriod: msToTs('1 day') })
        .catch((err: { code?: number }) => {
          if (err.code !== 6) throw err; // ALREADY_EXISTS
        });
      await waitFor('the default namespace', async () => {
        await connection.workflowService.describeNamespace({ namespace: 'default' });
        return true;
      });
      await connection.operatorService.addSearchAttributes({
        namespace: 'default',
        searchAttributes: Object.fromEntries(searchAttributes.map((key) => [key.name, KEYWORD])),
      });
      await waitFor('the search attributes', async () => {
        const listed = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
        return searchAttributes.every((key) => key.name in (listed.customAttributes ?? {}));
      });
    } finally {
      await connection.close();
    }

    return {
      address: frontend,
      postgres,
      async kill(service) {
        const child = processes.get(service);
        if (!child || child.exitCode !== null || child.signalCode !== null) return;
        child.kill('SIGKILL');
        await child;
      },
      start(service) {
        startService(service);
      },
      ready: () => waitFor('the frontend', frontendAnswers),
      async stop() {
        const running = [...processes.values()].filter((c) => c.exitCode === null && c.signalCode === null);
        for (const child of running) child.kill('SIGTERM');
        const timer = setTimeout(() => running.forEach((c) => c.kill('SIGKILL')), 15_000);
        await Promise.all(running);
        clearTimeout(timer);
        await postgres.stop();
      },
    };
  } catch (err) {
    // Nothing half-started is left behind for the retry or the caller.
    for (const child of processes.values()) child.kill('SIGKILL');
    await Promise.all(processes.values());
    await postgres.stop();
    throw err;
  }
}
