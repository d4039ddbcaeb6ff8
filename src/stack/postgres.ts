/**
 * A PostgreSQL server for the Temporal cluster the tests start (Debian's `postgresql` package, installed by
 * scripts/setup.sh when missing): its own data folder, port and socket folder, so it never meets a system one.
 * PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (runuser), in folders that user owns.
 */
import { execa, type ResultPromise } from 'execa';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import path from 'node:path';
import { freePort, isPortClash } from './ports.js';

export interface PostgresOptions {
  /** Holds the data folder, the socket folder and the log; created if missing. */
  dir: string;
  port: number;
  /** Temporal's four services and the SQL tool open many connections; its docs ask for about 200. */
  maxConnections?: number;
}

export interface Postgres {
  port: number;
  /** The superuser (trust authentication on 127.0.0.1 only). */
  user: string;
  start(): Promise<void>;
  /** A fast shutdown (what a restart by an operator or an orchestrator does). */
  stop(): Promise<void>;
  /** Runs SQL as the superuser; returns the rows, tab-separated. */
  query(database: string, sql: string): Promise<string>;
}

/** The newest PostgreSQL server's bin folder (VLMFLOW_POSTGRES_BIN, else /usr/lib/postgresql/<version>/bin). */
export function postgresBin(): string {
  if (process.env.VLMFLOW_POSTGRES_BIN) return process.env.VLMFLOW_POSTGRES_BIN;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(path.join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions[0]) {
    throw new Error(
      'no PostgreSQL server found under /usr/lib/postgresql: run `npm run setup` (it installs postgresql)',
    );
  }
  return path.join(root, versions[0], 'bin');
}

export async function createPostgres(opts: PostgresOptions): Promise<Postgres> {
  const bin = postgresBin();
  const data = path.join(opts.dir, 'data');
  const sockets = path.join(opts.dir, 'sockets');
  const asRoot = userInfo().uid === 0;
  const run = (command: string, args: string[]) =>
    asRoot
      ? execa('runuser', ['-u', 'postgres', '--', path.join(bin, command), ...args])
      : execa(path.join(bin, command), args);

  mkdirSync(sockets, { recursive: true });
  if (asRoot) {
    // The postgres user must reach and own its folders (temporary folders are 0700 root's).
    for (let dir = opts.dir; dir !== path.dirname(dir) && statSync(dir).uid === 0; dir = path.dirname(dir)) {
      if ((statSync(dir).mode & 0o005) !== 0o005) chmodSync(dir, statSync(dir).mode | 0o005);
    }
    const { uid, gid } = await postgresIds();
    chownSync(opts.dir, uid, gid);
    chownSync(sockets, uid, gid);
  }
  if (!existsSync(path.join(data, 'PG_VERSION'))) {
    await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-instructions']);
  }

  let server: ResultPromise | undefined;
  const settings = [
    '-D',
    data,
    '-p',
    String(opts.port),
    '-k',
    sockets,
    '-c',
    'listen_addresses=127.0.0.1',
    '-c',
    `max_connections=${opts.maxConnections ?? 250}`,
  ];
  const pg: Postgres = {
    port: opts.port,
    user: 'postgres',
    async start() {
      server = run('postgres', settings);
      server.catch(() => undefined); // its end is awaited by stop()
      const deadline = Date.now() + 60_000;
      for (;;) {
        const ready = await execa(path.join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(opts.port)], {
          reject: false,
        });
        if (ready.exitCode === 0) return;
        if (server.exitCode !== null || Date.now() > deadline) {
          const result = await server.catch((e: unknown) => e);
          throw new Error(
            `PostgreSQL did not start on port ${opts.port}: ${String((result as Error).message ?? result)}`,
          );
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async stop() {
      if (!server || server.exitCode !== null) return;
      // A fast shutdown (open transactions roll back, the next start needs no recovery), through pg_ctl: runuser
      // does not pass signals on to the server it started.
      await run('pg_ctl', ['stop', '-D', data, '-m', 'fast', '-w']);
      await server.catch(() => undefined);
    },
    async query(database: string, sql: string) {
      const psql = path.join(bin, 'psql');
      const args = ['-h', '127.0.0.1', '-p', String(opts.port), '-U', 'postgres', '-d', database, '-tAc', sql];
      return (await execa(psql, args)).stdout;
    },
  };
  return pg;
}

/** PostgreSQL in `dir` on a free port, started; a port taken before it could bind is retried on another. */
export async function startPostgres(dir: string): Promise<Postgres> {
  for (let attempt = 1; ; attempt++) {
    const pg = await createPostgres({ dir, port: await freePort() });
    try {
      await pg.start();
      return pg;
    } catch (err) {
      if (attempt >= 3 || !isPortClash(err)) throw err;
    }
  }
}

async function postgresIds(): Promise<{ uid: number; gid: number }> {
  const [uid, gid] = await Promise.all([execa('id', ['-u', 'postgres']), execa('id', ['-g', 'postgres'])]);
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) };
}
