/**
 * docker/ checked against the code. No Docker engine exists on the machines that build and test vlmflow, so
 * this suite checks everything that can be checked without one: the compose file's structure, the files it and
 * the Dockerfiles reference, the entry commands, that every environment variable set is one the code reads (and
 * the ones the code needs are set), ports, search attributes, and Dockerfile hygiene. The last suite runs the
 * compose environment for real, without containers: certificates made by the `certs` job's command, the Python
 * worker with the python-worker service's environment, its HEALTHCHECK, the temporal-setup job against a dev
 * server, and `vlmflow worker` with the ts-worker service's environment running a workflow end to end.
 */
import { Client, Connection } from '@temporalio/client';
import { execa, type ResultPromise } from 'execa';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { envSchema, loadEnv } from '../src/env.js';
import { projectRoot, temporalCli, temporalServer, workerPython } from '../src/paths.js';
import { startPostgres } from '../src/stack/postgres.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { searchAttributeFlags } from '../src/stack/temporal-dev-server.js';
import { SERVICES } from '../src/stack/temporal-cluster.js';
import { healthCheck } from '../workflows/index.js';
import { freePort, tempDir } from './helpers.js';

const dockerDir = path.join(projectRoot, 'docker');
const read = (file: string) => readFileSync(path.join(projectRoot, file), 'utf8');

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  expose?: string[];
  depends_on?: string[] | Record<string, { condition: string }>;
  restart?: string;
  user?: string;
  healthcheck?: { test: string[] };
  shm_size?: string;
  deploy?: {
    resources?: { reservations?: { devices?: { driver: string; count: unknown; capabilities: string[] }[] } };
  };
}

interface ComposeFile {
  services: Record<string, Service>;
  volumes: Record<string, { driver?: string; driver_opts?: Record<string, string> } | null>;
}
const compose = parse(read('docker/compose.yaml'), { merge: true }) as ComposeFile;
const gpuHost = parse(read('docker/compose.gpu-host.yaml'), { merge: true }) as ComposeFile;
const nfs = parse(read('docker/compose.nfs.yaml')) as ComposeFile;
const services = compose.services;
const service = (name: string): Service => {
  const found = services[name];
  if (!found) throw new Error(`docker/compose.yaml has no service ${name}`);
  return found;
};

/** `${NAME:-default}` as compose resolves it with NAME unset (`${NAME:?message}` resolves to ''). */
function interpolate(value: string): string {
  return value.replace(/\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}/g, (_, _name: string, op?: string, rest?: string) =>
    op === '-' ? (rest ?? '') : '',
  );
}
const environment = (name: string): Record<string, string> =>
  Object.fromEntries(Object.entries(service(name).environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]));

/** Every string literal VLMFLOW_* name in the Python package (settings, healthcheck, jobs). */
function pythonEnvNames(dir = path.join(projectRoot, 'python-worker/src/vlmflow_worker')): Set<string> {
  const names = new Set<string>();
  for (const entry of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    if (!entry.endsWith('.py')) continue;
    for (const m of readFileSync(path.join(dir, entry), 'utf8').matchAll(/["'](VLMFLOW_[A-Z0-9_]+)["']/g)) {
      names.add(m[1]!);
    }
  }
  return names;
}
/** What the worker's settings read: the user-facing Python configuration. */
const pythonSettingNames = new Set(
  [...read('python-worker/src/vlmflow_worker/serve/settings.py').matchAll(/env\("(VLMFLOW_[A-Z0-9_]+)"/g)].map(
    (m) => m[1]!,
  ),
);
/** The zod schema's keys plus the few `process.env.X` reads outside it (log levels, tool paths). */
function tsEnvNames(): Set<string> {
  const names = new Set(Object.keys(envSchema.shape));
  for (const dir of ['src', 'activities', 'workflows', 'bin']) {
    for (const entry of readdirSync(path.join(projectRoot, dir), { recursive: true, encoding: 'utf8' })) {
      if (!/\.[jt]s$/.test(entry)) continue;
      const text = readFileSync(path.join(projectRoot, dir, entry), 'utf8');
      for (const m of text.matchAll(/process\.env\.([A-Z0-9_]+)/g)) names.add(m[1]!);
    }
  }
  return names;
}
/** Variables read by libraries inside the images, not by vlmflow. */
const thirdParty = new Set(['HF_TOKEN', 'HF_HOME', 'NODE_ENV', 'PYTHONUNBUFFERED', 'PYTHONDONTWRITEBYTECODE']);

interface Instruction {
  stage: number;
  op: string;
  args: string;
}
/** A Dockerfile as instructions (continuations joined, comments dropped), each tagged with its stage. */
function dockerfile(file: string): Instruction[] {
  const joined = read(file)
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('\n')
    .replace(/\\\n/g, ' ');
  let stage = -1;
  const out: Instruction[] = [];
  for (const line of joined.split('\n')) {
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'FROM') stage += 1;
    out.push({ stage, op: m[1]!, args: m[2]!.trim() });
  }
  return out;
}
const finalStage = (ins: Instruction[]) => ins.filter((i) => i.stage === Math.max(...ins.map((j) => j.stage)));
const execForm = (args: string): string[] => JSON.parse(args) as string[];

const vlmflowServices = ['certs', 'python-worker', 'ts-worker'];
const dockerfiles = ['docker/python-worker.Dockerfile', 'docker/ts-worker.Dockerfile'];

describe("docker/temporal-schema.sh (the compose job that makes Temporal's schema)", () => {
  it('sets up both databases with the SQL tool and release of the cluster tests, at its newest schema, idempotently', async () => {
    const pg = await startPostgres(tempDir('schema-pg'));
    try {
      const bin = tempDir('schema-bin'); // the admin-tools image calls the tool `temporal-sql-tool`
      symlinkSync(temporalServer.sqlTool, path.join(bin, 'temporal-sql-tool'));
      const schemaDir = path.join(temporalServer.schema, 'postgresql', 'v12');
      const env = {
        ...environment('temporal-schema'),
        POSTGRES_SEEDS: '127.0.0.1',
        DB_PORT: String(pg.port),
        POSTGRES_USER: pg.user,
        POSTGRES_PWD: 'unused',
        SCHEMA_DIR: schemaDir,
        PATH: `${bin}:${process.env.PATH ?? ''}`,
      };
      const first = await execa('sh', [path.join(dockerDir, 'temporal-schema.sh')], { env, reject: false });
      expect(first.exitCode, first.stderr).toBe(0);
      expect(first.stdout).toContain('created temporal_visibility');
      const again = await execa('sh', [path.join(dockerDir, 'temporal-schema.sh')], { env, reject: false });
      expect(again.exitCode, again.stderr).toBe(0);
      expect(again.stdout).toContain("temporal_visibility is at this release's schema");
      for (const [database, dir] of [
        ['temporal', 'temporal'],
        ['temporal_visibility', 'visibility'],
      ] as const) {
        const versions = readdirSync(path.join(schemaDir, dir, 'versioned')).map((v) => v.slice(1));
        const newest = versions.sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).at(-1);
        expect(await pg.query(database, 'select curr_version from schema_version'), database).toBe(newest);
      }
    } finally {
      await pg.stop();
    }
  }, 120_000);
});

describe('docker/compose.yaml', () => {
  it('runs PostgreSQL, the schema job, the four Temporal services, the setup job, the Web UI, the certificates job, both workers, Prometheus and Grafana', () => {
    const temporalServices = SERVICES.map((s) => `temporal-${s}`);
    expect(Object.keys(services).sort()).toEqual(
      [
        'certs',
        'grafana',
        'postgresql',
        'prometheus',
        'python-worker',
        'temporal-schema',
        ...temporalServices,
        'temporal-setup',
        'temporal-ui',
        'ts-worker',
      ].sort(),
    );
    // One container per service, as the cluster tests run one process per service (src/stack/temporal-cluster.ts).
    for (const name of SERVICES) {
      const env = environment(`temporal-${name}`);
      expect(env.SERVICES, name).toBe(name);
      expect(env.DB, name).toBe('postgres12');
      expect(env.POSTGRES_SEEDS, name).toBe('postgresql');
      expect(env.PUBLIC_FRONTEND_ADDRESS, name).toBe('temporal-frontend:7233');
    }
  });

  it('runs the Temporal release the tests build, from the official server and admin-tools images', () => {
    const release = /go\.temporal\.io\/server\/cmd\/server@v([\d.]+)/.exec(read('scripts/setup.sh'))![1]!;
    for (const name of SERVICES) expect(service(`temporal-${name}`).image).toBe(`temporalio/server:${release}`);
    for (const name of ['temporal-schema', 'temporal-setup']) {
      expect(service(name).image, name).toBe(`temporalio/admin-tools:${release}`);
    }
  });

  it('checks the health of every long-running service', () => {
    const oneShot = ['certs', 'temporal-schema', 'temporal-setup'];
    const withoutCheck = Object.entries(services)
      .filter(
        ([name, svc]) =>
          !oneShot.includes(name) && !svc.healthcheck && !['temporal-ui', 'grafana', 'ts-worker'].includes(name),
      )
      .map(([name]) => name);
    expect(withoutCheck).toEqual([]);
  });

  it('mounts the artifact store in the TS worker where the Python worker has it (batch inference reads shard files)', () => {
    const root = environment('python-worker').VLMFLOW_ARTIFACT_ROOT!;
    const store = service('python-worker')
      .volumes!.find((v) => v.split(':')[1] === root)!
      .split(':')[0];
    for (const file of [services, gpuHost.services]) {
      expect(file['ts-worker']!.volumes).toContain(`${store}:${root}`);
    }
  });

  it('pins every image and restarts long-running services, not one-shot jobs', () => {
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.build) expect(svc.image, name).toMatch(/^[\w./-]+:v?\d[\w.-]*$/);
      const oneShot = ['certs', 'temporal-schema', 'temporal-setup'].includes(name);
      expect(svc.restart, name).toBe(oneShot ? (name === 'certs' ? 'no' : 'on-failure') : 'unless-stopped');
    }
  });

  it('refers only to declared services and volumes, with valid start conditions', () => {
    const conditions = ['service_started', 'service_healthy', 'service_completed_successfully'];
    for (const [name, svc] of Object.entries(services)) {
      const deps = Array.isArray(svc.depends_on) ? svc.depends_on : Object.keys(svc.depends_on ?? {});
      for (const dep of deps) expect(Object.keys(services), `${name} depends on ${dep}`).toContain(dep);
      if (svc.depends_on && !Array.isArray(svc.depends_on)) {
        for (const dep of Object.values(svc.depends_on)) expect(conditions).toContain(dep.condition);
      }
      for (const volume of svc.volumes ?? []) {
        const source = volume.split(':')[0]!;
        if (source.startsWith('.') || source.startsWith('$')) {
          const resolved = path.resolve(dockerDir, interpolate(source));
          if (!source.startsWith('$')) expect(existsSync(resolved), `${name}: ${source}`).toBe(true);
        } else {
          expect(Object.keys(compose.volumes), `${name}: volume ${source}`).toContain(source);
        }
      }
    }
    // The healthy condition needs a healthcheck (the Python image has one; compose restates it).
    expect(service('python-worker').healthcheck?.test).toEqual([
      'CMD',
      'python',
      '-m',
      'vlmflow_worker.serve.healthcheck',
    ]);
  });

  it('builds from Dockerfiles that exist, in a context that holds what they copy', () => {
    for (const name of vlmflowServices) {
      const build = service(name).build!;
      const context = path.resolve(dockerDir, build.context);
      expect(context).toBe(projectRoot);
      expect(dockerfiles).toContain(build.dockerfile);
      const ignore = read(`${build.dockerfile}.dockerignore`)
        .split('\n')
        .filter((l) => l.startsWith('!'))
        .map((l) => l.slice(1).replace(/\/$/, ''));
      for (const ins of dockerfile(build.dockerfile).filter((i) => i.op === 'COPY' && !i.args.includes('--from'))) {
        const sources = ins.args
          .split(/\s+/)
          .filter((a) => !a.startsWith('--'))
          .slice(0, -1);
        for (const source of sources) {
          expect(existsSync(path.join(context, source)), `${build.dockerfile}: COPY ${source}`).toBe(true);
          expect(ignore, `${build.dockerfile}.dockerignore lets ${source} in`).toContain(source.replace(/\/$/, ''));
        }
      }
    }
  });

  it('sets only variables the code reads, for the vlmflow services and images', () => {
    const ts = tsEnvNames();
    const py = pythonEnvNames();
    for (const key of Object.keys(environment('ts-worker'))) {
      expect(ts.has(key) || thirdParty.has(key), `ts-worker sets ${key}, which no TS code reads`).toBe(true);
    }
    for (const key of Object.keys(environment('python-worker'))) {
      expect(py.has(key) || thirdParty.has(key), `python-worker sets ${key}, which no Python code reads`).toBe(true);
    }
    for (const [file, names] of [
      ['docker/python-worker.Dockerfile', py],
      ['docker/ts-worker.Dockerfile', ts],
    ] as const) {
      const envs = dockerfile(file).filter((i) => i.op === 'ENV');
      for (const m of envs.flatMap((i) => [...i.args.matchAll(/([A-Z0-9_]+)=/g)])) {
        const key = m[1]!;
        if (key !== 'PATH' && !key.startsWith('DEBIAN') && !key.startsWith('PIP_')) {
          expect(names.has(key) || thirdParty.has(key), `${file} sets ${key}`).toBe(true);
        }
      }
    }
  });

  it("sets what the code needs, and the TS worker's values parse with the config schema", () => {
    const ts = environment('ts-worker');
    expect(ts.TEMPORAL_ADDRESS).toBeTruthy();
    expect(ts.VLMFLOW_WORKER_ADDRESS).toBeTruthy();
    const env = loadEnv(ts);
    expect(env.VLMFLOW_GPU_TASK_QUEUE).toBe('vlmflow-gpu');
    expect(env.VLMFLOW_WORKFLOW_TASK_QUEUE).toBe('vlmflow');

    // A worker bound to 0.0.0.0 starts only with TLS and a token (or --insecure, which compose must not use).
    const py = environment('python-worker');
    expect(py.VLMFLOW_WORKER_HOST).toBe('0.0.0.0');
    expect(py.VLMFLOW_WORKER_INSECURE).toBeUndefined();
    expect(py.VLMFLOW_WORKER_TLS_CERT && py.VLMFLOW_WORKER_TLS_KEY).toBeTruthy();
    expect(py.VLMFLOW_WORKER_TOKEN_FILE ?? py.VLMFLOW_WORKER_TOKEN).toBeTruthy();
    // The two sides agree: same token, client certificate iff the worker asks for one, same CA.
    expect(ts.VLMFLOW_WORKER_TOKEN_FILE).toBe(py.VLMFLOW_WORKER_TOKEN_FILE);
    expect(Boolean(ts.VLMFLOW_WORKER_TLS_CLIENT_CERT)).toBe(Boolean(py.VLMFLOW_WORKER_TLS_CLIENT_CA));
    expect(ts.VLMFLOW_WORKER_TLS_CA).toBe(py.VLMFLOW_WORKER_TLS_CLIENT_CA);
  });

  it('mounts the certificates read-only where the variables point, and the artifacts at the artifact root', () => {
    for (const name of ['python-worker', 'ts-worker']) {
      const mount = service(name).volumes!.find((v) => v.startsWith('certs:'))!;
      expect(mount).toBe('certs:/certs:ro');
      for (const [key, value] of Object.entries(environment(name))) {
        if (/_(CA|CERT|KEY|TOKEN_FILE)$/.test(key)) expect(value, `${name} ${key}`).toMatch(/^\/certs\/[\w.]+$/);
      }
    }
    const artifacts = service('python-worker').volumes!.find((v) => v.startsWith('artifacts:'))!;
    expect(artifacts.split(':')[1]).toBe(environment('python-worker').VLMFLOW_ARTIFACT_ROOT);
    expect(service('certs').volumes).toContain('certs:/certs');
  });

  it("creates the Python worker's volume mount points in its image, owned by its user", () => {
    const run = finalStage(dockerfile('docker/python-worker.Dockerfile'))
      .filter((i) => i.op === 'RUN')
      .map((i) => i.args)
      .join(' ');
    for (const volume of service('python-worker').volumes!) {
      const [source, target] = volume.split(':');
      if (source!.startsWith('.') || source!.startsWith('$') || volume.endsWith(':ro')) continue;
      // A fresh named volume copies the ownership of the folder it is mounted on.
      expect(run, `${target} is created`).toMatch(new RegExp(`mkdir -p [^&]*${target}\\b`));
      expect(run, `${target} is chowned`).toMatch(new RegExp(`chown vlmflow:vlmflow [^&]*${target}\\b`));
    }
  });

  it('makes the worker certificate for the host the TS worker dials', () => {
    const command = service('certs').command!.join(' ');
    const host = environment('ts-worker').VLMFLOW_WORKER_ADDRESS!.split(':')[0]!;
    expect(command).toMatch(new RegExp(`vlmflow-gen-certs /certs .*\\b${host}\\b`));
    expect(command).toContain('localhost'); // the HEALTHCHECK dials localhost with this server name
    expect(environment('python-worker').VLMFLOW_WORKER_TLS_SERVER_NAME).toBe('localhost');
    expect(command).toContain('chown -R 10001:10001 /certs'); // the images' non-root uid
  });

  it('agrees on ports: the worker address, its port, EXPOSE, the healthcheck default; Temporal and the UI', () => {
    const [host, port] = environment('ts-worker').VLMFLOW_WORKER_ADDRESS!.split(':');
    expect(Object.keys(services)).toContain(host);
    expect(environment('python-worker').VLMFLOW_WORKER_PORT).toBe(port);
    // Its gRPC port, and the metrics port Prometheus scrapes (checked in the metrics suite below).
    expect(service('python-worker').expose).toEqual([
      port,
      environment('python-worker').VLMFLOW_WORKER_METRICS_ADDRESS!.split(':')[1],
    ]);
    const python = dockerfile('docker/python-worker.Dockerfile');
    expect(python.find((i) => i.op === 'EXPOSE')?.args).toBe(port);
    expect(python.some((i) => i.op === 'ENV' && i.args.includes(`VLMFLOW_WORKER_PORT=${port}`))).toBe(true);
    expect(read('python-worker/src/vlmflow_worker/serve/settings.py')).toContain(`"VLMFLOW_WORKER_PORT", "${port}"`);
    expect(read('python-worker/src/vlmflow_worker/serve/healthcheck.py')).toContain(`'VLMFLOW_WORKER_PORT', '${port}'`);

    const temporal = 'temporal-frontend:7233';
    expect(service('temporal-frontend').ports).toEqual(['127.0.0.1:7233:7233']);
    for (const name of ['ts-worker', 'temporal-setup', 'temporal-ui']) {
      expect(environment(name).TEMPORAL_ADDRESS, name).toBe(temporal);
    }
    expect(service('temporal-ui').ports).toEqual(['127.0.0.1:8080:8080']);
    expect(environment('temporal-ui').TEMPORAL_CORS_ORIGINS).toBe('http://localhost:8080');
  });

  it('registers the search attributes of src/config/search-attributes.ts', () => {
    const expected = searchAttributeFlags().filter((flag) => flag !== '--search-attribute');
    expect(service('temporal-setup').command).toEqual(expected);
    expect(expected).toEqual([
      'VlmflowModel=Keyword',
      'VlmflowDataset=Keyword',
      'VlmflowStage=Keyword',
      'VlmflowStatus=Keyword',
    ]);
    expect(service('temporal-setup').entrypoint).toEqual(['/bin/sh', '/setup/temporal-setup.sh']);
    expect(service('temporal-setup').volumes).toContain('./temporal-setup.sh:/setup/temporal-setup.sh:ro');
  });

  it('reserves the GPUs for the Python worker only, with shared memory for data loaders', () => {
    const devices = service('python-worker').deploy?.resources?.reservations?.devices;
    expect(devices).toEqual([{ driver: 'nvidia', count: 'all', capabilities: ['gpu'] }]);
    expect(service('python-worker').shm_size).toBeDefined();
    for (const [name, svc] of Object.entries(services)) {
      if (name !== 'python-worker') expect(svc.deploy, name).toBeUndefined();
    }
  });
});

describe('docker/compose.gpu-host.yaml and compose.nfs.yaml', () => {
  const extra = gpuHost.services;

  it('runs the same certificates job and Python worker as the main file, and a TS worker', () => {
    expect(Object.keys(extra).sort()).toEqual(['certs', 'python-worker', 'ts-worker']);
    expect(extra.certs).toEqual(service('certs'));
    // The one difference: the main file's Prometheus scrapes the metrics ports inside the compose network
    // (expose); a GPU host publishes them for the central Prometheus (ports) instead.
    const { expose: workerExpose, ports: workerPorts, ...worker } = extra['python-worker']!;
    const { expose: mainWorkerExpose, ...mainWorker } = service('python-worker');
    expect(worker).toEqual(mainWorker);
    expect(mainWorkerExpose).toEqual(['50051', '9465']);
    expect(workerExpose).toEqual(['50051']);
    expect(workerPorts).toEqual(['9465:9465']);
    const { environment: env, volumes, depends_on, ports: tsPorts, ...rest } = extra['ts-worker']!;
    const {
      environment: mainEnv,
      volumes: mainVolumes,
      depends_on: _deps,
      expose: tsExpose,
      ...mainRest
    } = service('ts-worker');
    expect(rest).toEqual(mainRest);
    expect(tsExpose).toEqual(['9464']);
    expect(tsPorts).toEqual(['9464:9464']);
    expect(depends_on).toEqual({ 'python-worker': { condition: 'service_healthy' } });
    expect(volumes).toEqual([...mainVolumes!, '${TEMPORAL_TLS_DIR:-./temporal-tls}:/temporal-tls:ro']);
    for (const [key, value] of Object.entries(mainEnv!)) {
      if (!key.startsWith('TEMPORAL_')) expect(env![key], key).toBe(value);
    }
  });

  it('requires the central Temporal address and passes its TLS settings, all read by the code', () => {
    const env = extra['ts-worker']!.environment!;
    expect(env.TEMPORAL_ADDRESS).toMatch(/^\$\{TEMPORAL_ADDRESS:\?.+\}$/);
    const names = tsEnvNames();
    for (const key of Object.keys(env)) expect(names.has(key), key).toBe(true);
    const resolved = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(String(v))]));
    const parsed = loadEnv({ ...resolved, TEMPORAL_ADDRESS: 'temporal.internal:7233' });
    expect(parsed.TEMPORAL_TLS).toBe(false);
    expect(parsed.TEMPORAL_TLS_CA).toBeUndefined();
    expect(Object.keys(gpuHost.volumes).sort()).toEqual(['artifacts', 'certs', 'hf-cache']);
  });

  it('puts the artifacts volume on NFS, for either file', () => {
    expect(Object.keys(nfs)).toEqual(['volumes']);
    expect(nfs.volumes.artifacts?.driver_opts?.type).toBe('nfs');
    expect(nfs.volumes.artifacts?.driver_opts?.o).toMatch(/^addr=\$\{VLMFLOW_NFS_SERVER:\?/);
    expect(Object.keys(compose.volumes)).toContain('artifacts');
  });
});

describe('the Dockerfiles', () => {
  it.each(dockerfiles)('%s is multi-stage, pinned, non-root, and copies dependencies before code', (file) => {
    const ins = dockerfile(file);
    const froms = ins.filter((i) => i.op === 'FROM');
    expect(froms.length).toBeGreaterThanOrEqual(2);
    // Base images come from ARG defaults with an exact tag; stages refer to earlier stages by name.
    for (const arg of ins.filter((i) => i.op === 'ARG' && /IMAGE=/.test(i.args))) {
      expect(arg.args).toMatch(/=[\w./-]+:\d[\w.-]*$/);
    }
    expect(read(file)).not.toMatch(/:latest\b/);
    const last = finalStage(ins);
    const user = last.filter((i) => i.op === 'USER').at(-1)?.args;
    expect(user).toBe('vlmflow');
    expect(last.some((i) => i.op === 'RUN' && /useradd --uid 10001/.test(i.args))).toBe(true);
    // Cache-friendly: the dependency manifest is copied and installed before the source.
    const copies = ins.filter((i) => i.op === 'COPY' && !i.args.includes('--from')).map((i) => i.args);
    const manifest = copies.findIndex((c) => /package-lock\.json|requirements\.lock/.test(c));
    const source = copies.findIndex((c) => /\bsrc\b/.test(c));
    expect(manifest).toBeGreaterThanOrEqual(0);
    expect(manifest).toBeLessThan(source);
    for (const run of ins.filter((i) => i.op === 'RUN')) {
      if (run.args.includes('apt-get install')) {
        expect(run.args).toContain('--no-install-recommends');
        expect(run.args).toContain('rm -rf /var/lib/apt/lists/*');
        expect(run.args).toContain('apt-get update');
      }
      if (/\bpip install\b/.test(run.args)) {
        expect(run.args.includes('--no-cache-dir') || run.args.includes('--mount=type=cache')).toBe(true);
      }
    }
    expect(read(file).split('\n')[0]).toMatch(/^# syntax=docker\/dockerfile:1/);
  });

  it('installs production dependencies only in the TS image on a current Node LTS, builds the workflow bundle, and starts `vlmflow worker`', async () => {
    const ins = dockerfile('docker/ts-worker.Dockerfile');
    expect(ins.find((i) => i.op === 'RUN' && i.args.includes('npm ci'))?.args).toContain('--omit=dev');
    expect(ins.find((i) => i.op === 'ARG')?.args).toMatch(/node:(22|24)-[\w.-]*/); // 20 is past its end of life
    // The bundle is built with the image, where the worker is told to load it.
    const bundled = ins
      .find((i) => i.op === 'RUN' && i.args.includes('bin/vlmflow.js bundle'))!
      .args.split(' ')
      .at(-1);
    expect(ins.find((i) => i.op === 'ENV' && i.args.startsWith('VLMFLOW_WORKFLOW_BUNDLE='))?.args).toBe(
      `VLMFLOW_WORKFLOW_BUNDLE=${bundled}`,
    );
    const entrypoint = execForm(ins.find((i) => i.op === 'ENTRYPOINT')!.args);
    expect(entrypoint).toEqual(['node', 'bin/vlmflow.js']);
    expect(execForm(ins.find((i) => i.op === 'CMD')!.args)).toEqual(service('ts-worker').command);
    // tsx runs the TypeScript at run time, so it must be a production dependency.
    const pkg = JSON.parse(read('package.json')) as { dependencies: Record<string, string> };
    expect(pkg.dependencies.tsx).toBeDefined();
    const help = await execa('node', ['bin/vlmflow.js', '--help'], { cwd: projectRoot });
    expect(help.stdout).toMatch(/^\s+worker\b/m);
  });

  it('installs torch, transformers, trl, peft and bitsandbytes in the Python image, with a Health check', async () => {
    const ins = dockerfile('docker/python-worker.Dockerfile');
    expect(ins.find((i) => i.op === 'ARG')?.args).toMatch(/^CUDA_IMAGE=nvidia\/cuda:[\d.]+-\w+-ubuntu[\d.]+$/);
    const pyproject = read('python-worker/pyproject.toml');
    for (const lib of ['torch', 'transformers', 'trl', 'peft', 'bitsandbytes']) {
      expect(pyproject).toMatch(new RegExp(`"${lib}==[\\d.]+"`));
    }
    expect(ins.some((i) => i.op === 'RUN' && i.args.includes("['optional-dependencies']['cuda']"))).toBe(true);
    const health = ins.find((i) => i.op === 'HEALTHCHECK')!.args;
    expect(health).toContain('CMD ["python", "-m", "vlmflow_worker.serve.healthcheck"]');
    expect(execForm(ins.find((i) => i.op === 'ENTRYPOINT')!.args)).toEqual(['python', '-m', 'vlmflow_worker']);
    expect(execForm(ins.find((i) => i.op === 'CMD')!.args)).toEqual(['serve']);
    // The entry commands exist: `serve` and the healthcheck module parse their arguments.
    for (const args of [
      ['-m', 'vlmflow_worker', 'serve', '--help'],
      ['-m', 'vlmflow_worker.serve.healthcheck', '--help'],
    ]) {
      const result = await execa(workerPython, args, { reject: false });
      expect(result.exitCode, args.join(' ')).toBe(0);
    }
    expect(statSync(path.join(dockerDir, 'gen-certs.sh')).mode & 0o111).not.toBe(0);
  });

  it("lists the Python image's dependencies with its own command, each agreeing with requirements.lock", async () => {
    const run = dockerfile('docker/python-worker.Dockerfile').find(
      (i) => i.op === 'RUN' && i.args.includes('tomllib'),
    )!;
    const command = /(python -c ".*") >requirements\.txt/.exec(run.args)![1]!;
    const listed = await execa('sh', ['-c', command], {
      cwd: path.join(projectRoot, 'python-worker'),
      env: { PATH: `${path.dirname(workerPython)}:${process.env.PATH}` },
    });
    const pins = listed.stdout.split('\n').map((line) => line.split('=='));
    expect(pins.map(([name]) => name)).toEqual(
      expect.arrayContaining(['torch', 'transformers', 'trl', 'peft', 'bitsandbytes']),
    );
    const lock = new Map(
      read('python-worker/requirements.lock')
        .split('\n')
        .filter((line) => line.includes('=='))
        .map((line) => line.split('==') as [string, string])
        .map(([name, version]) => [name.toLowerCase().replace(/_/g, '-'), version.trim()]),
    );
    for (const [name, version] of pins) {
      const locked = lock.get(name!.toLowerCase());
      if (locked) expect(version, `${name} in pyproject.toml vs requirements.lock`).toBe(locked);
    }
  });
});

describe('docker/ metrics: Prometheus scrapes both workers, Grafana shows them', () => {
  interface ScrapeConfig {
    job_name: string;
    static_configs: { targets: string[] }[];
  }
  const prometheus = parse(read('docker/prometheus.yml')) as { scrape_configs: ScrapeConfig[] };
  const metricsVariables = {
    'python-worker': 'VLMFLOW_WORKER_METRICS_ADDRESS',
    'ts-worker': 'VLMFLOW_TEMPORAL_METRICS_ADDRESS',
  };

  it("targets each worker by its compose service name, on the port that worker's metrics variable binds", () => {
    const targets = prometheus.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets));
    for (const [name, variable] of Object.entries(metricsVariables)) {
      const address = environment(name)[variable];
      expect(address, `${name} sets ${variable}`).toMatch(/^0\.0\.0\.0:\d+$/); // reachable on the compose network
      const port = address!.split(':')[1]!;
      expect(targets, `prometheus.yml scrapes ${name}`).toContain(`${name}:${port}`);
      expect(service(name).expose, `${name} exposes ${port}`).toContain(port);
      expect(service(name).ports ?? [], `${name} publishes no metrics port on the host`).toEqual([]);
      // The extra GPU host's workers bind the same ports, published for the central Prometheus.
      const remote = gpuHost.services[name]!;
      expect(remote.environment?.[variable], `compose.gpu-host.yaml ${name}`).toBe(address);
      expect(remote.ports, `compose.gpu-host.yaml ${name}`).toContain(`${port}:${port}`);
    }
    for (const target of targets) {
      const [host, port] = target.split(':') as [string, string];
      expect(Object.keys(services), `${target}: a compose service`).toContain(host);
      expect(Object.keys(metricsVariables), `${target}: a vlmflow worker`).toContain(host);
      expect(environment(host)[metricsVariables[host as keyof typeof metricsVariables]]).toBe(`0.0.0.0:${port}`);
    }
    // The TS worker's value is one its config schema accepts.
    expect(loadEnv(environment('ts-worker')).VLMFLOW_TEMPORAL_METRICS_ADDRESS).toBe('0.0.0.0:9464');
  });

  it('mounts the scrape config, Grafana provisioning and the dashboard where each program reads them', () => {
    /** A service's bind mounts, source -> target. */
    const mounts = (name: string): Record<string, string> =>
      Object.fromEntries(service(name).volumes!.map((v) => v.split(':').slice(0, 2) as [string, string]));
    const command = service('prometheus').command!;
    const config = command.find((c) => c.startsWith('--config.file='))!.split('=')[1]!;
    expect(mounts('prometheus')['./prometheus.yml']).toBe(config);
    const grafana = mounts('grafana');
    expect(grafana['./grafana/provisioning']).toBe('/etc/grafana/provisioning');
    const provider = parse(read('docker/grafana/provisioning/dashboards/vlmflow.yaml')) as {
      providers: { options: { path: string } }[];
    };
    expect(grafana['./grafana/dashboards']).toBe(provider.providers[0]!.options.path);
    const home = environment('grafana').GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH!;
    expect(path.dirname(home)).toBe(provider.providers[0]!.options.path);
    expect(existsSync(path.join(dockerDir, 'grafana/dashboards', path.basename(home)))).toBe(true);
    // The data source points at the prometheus service, under the uid the dashboard's panels name.
    const sources = parse(read('docker/grafana/provisioning/datasources/prometheus.yaml')) as {
      datasources: { uid: string; url: string }[];
    };
    expect(sources.datasources[0]!.url).toBe(`http://prometheus:${service('prometheus').ports![0]!.split(':').at(-1)}`);
    const dashboard = JSON.parse(read(`docker/grafana/dashboards/${path.basename(home)}`)) as {
      panels: { type: string; datasource?: { uid: string } }[];
    };
    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource?.uid).toBe(sources.datasources[0]!.uid);
    }
  });
});

describe('docker/README.md', () => {
  it('documents every variable the code reads and compose sets, in one table', () => {
    const readme = read('docker/README.md');
    const documented = new Set([...readme.matchAll(/^\| `([A-Z0-9_]+)`/gm)].map((m) => m[1]!));
    const required = new Set([
      ...Object.keys(envSchema.shape),
      ...pythonSettingNames,
      ...vlmflowServices.flatMap((name) => Object.keys(environment(name))),
    ]);
    for (const name of required) {
      if (!thirdParty.has(name)) expect(documented, `docker/README.md documents ${name}`).toContain(name);
    }
    expect(readme).toMatch(/no Docker engine/i);
  });
});

/** Rewrites the compose paths (/certs, /artifacts, /data) to local folders. */
function localise(env: Record<string, string>, dirs: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(env).map(([k, v]) => [k, v.replace(/^\/(certs|artifacts|data)\b/, (_, d: string) => dirs[d]!)]),
  );
}

describe('the compose environment, run without containers', () => {
  const dirs = { certs: tempDir('certs'), artifacts: tempDir('artifacts'), data: tempDir('data') };
  let python: PythonWorker;
  let temporal: ResultPromise | undefined;
  let temporalAddress: string;

  beforeAll(async () => {
    // The `certs` job's command, with the image's helper replaced by the script it is copied from.
    const command = service('certs').command!.join(' ').split('&&')[0]!.trim().split(/\s+/);
    expect(command[0]).toBe('vlmflow-gen-certs');
    await execa('sh', [path.join(dockerDir, 'gen-certs.sh'), dirs.certs, ...command.slice(2)]);

    const port = await freePort();
    temporalAddress = `127.0.0.1:${port}`;
    temporal = execa(
      temporalCli,
      ['server', 'start-dev', '--headless', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'error'],
      { reject: false, stdio: 'ignore' },
    );
    // The python-worker service's environment, on a free port, as the worker's own process sees it.
    // Free ports for it and its metrics: the service's fixed ones may be taken on a test machine.
    const env = {
      ...localise(environment('python-worker'), dirs),
      VLMFLOW_WORKER_PORT: '0',
      VLMFLOW_WORKER_METRICS_ADDRESS: '127.0.0.1:0',
    };
    python = await startPythonWorker({ artifactRoot: dirs.artifacts, env });
  });

  afterAll(async () => {
    await python?.stop();
    temporal?.kill('SIGTERM');
    await temporal;
  });

  it("passes the worker's bind check and its HEALTHCHECK with the service's settings", async () => {
    const env = { ...localise(environment('python-worker'), dirs), VLMFLOW_WORKER_PORT: String(python.port) };
    const result = await execa(workerPython, ['-m', 'vlmflow_worker.serve.healthcheck'], { env, reject: false });
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toContain('"healthy": true');
  });

  it('registers the search attributes with the temporal-setup job, idempotently', async () => {
    const svc = service('temporal-setup');
    const env = { ...environment('temporal-setup'), TEMPORAL_ADDRESS: temporalAddress };
    const run = () =>
      execa('sh', [path.join(dockerDir, 'temporal-setup.sh'), ...svc.command!], {
        env: { ...env, PATH: `${path.dirname(temporalCli)}:${process.env.PATH}` },
      });
    expect((await run()).stdout).toMatch(/registered search attribute VlmflowStage \(Keyword\)/);
    expect((await run()).stdout).toMatch(/search attribute VlmflowStage exists/);
    const connection = await Connection.connect({ address: temporalAddress });
    const listed = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    await connection.close();
    for (const pair of svc.command!) expect(Object.keys(listed.customAttributes)).toContain(pair.split('=')[0]);
  });

  it('runs `vlmflow worker` with the ts-worker service environment: a workflow reaches the worker over mTLS', async () => {
    const taskQueue = `docker-${randomUUID()}`;
    const env = {
      ...localise(environment('ts-worker'), dirs),
      TEMPORAL_ADDRESS: temporalAddress,
      // The compose host name is not resolvable here; dial loopback and check the name compose dials.
      VLMFLOW_WORKER_ADDRESS: `127.0.0.1:${python.port}`,
      VLMFLOW_WORKER_TLS_SERVER_NAME: environment('ts-worker').VLMFLOW_WORKER_ADDRESS!.split(':')[0]!,
      VLMFLOW_WORKFLOW_TASK_QUEUE: taskQueue,
      VLMFLOW_GPU_TASK_QUEUE: `${taskQueue}-gpu`,
      VLMFLOW_TEMPORAL_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
    };
    const worker = execa('node', ['bin/vlmflow.js', ...service('ts-worker').command!], {
      cwd: projectRoot,
      env,
      reject: false,
      all: true,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no "workers running" line within 90 s')), 90_000);
        createInterface({ input: worker.all }).on('line', (line) => {
          if (line.includes('workers running')) {
            clearTimeout(timer);
            resolve();
          }
        });
        void worker.then((r) => reject(new Error(`vlmflow worker exited early: ${r.all}`)));
      });
      const connection = await Connection.connect({ address: temporalAddress });
      const client = new Client({ connection });
      const result = await client.workflow.execute(healthCheck, {
        taskQueue,
        workflowId: `docker-${randomUUID()}`,
        args: [{ gpuTaskQueue: `${taskQueue}-gpu` }],
      });
      await connection.close();
      expect(result.jobCapacity).toBe(1);
      expect(result.workerId).toContain(`:${python.port}:`);
      // Both workers serve what Prometheus scrapes: the TS worker the workflow it ran, the Python worker its slots.
      const scraped = async (address: string) => (await fetch(`http://${address}/metrics`)).text();
      expect(await scraped(env.VLMFLOW_TEMPORAL_METRICS_ADDRESS)).toMatch(
        /^temporal_workflow_completed_total\{[^}]*workflow_type="healthCheck"[^}]*\} 1$/m,
      );
      expect(await scraped(python.metricsAddress!)).toMatch(/^vlmflow_job_capacity 1\.0$/m);
    } finally {
      worker.kill('SIGTERM');
    }
    const exit = await worker;
    expect(exit.exitCode, exit.all).toBe(0);
  });
});
