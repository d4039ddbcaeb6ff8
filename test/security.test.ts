/**
 * Safe defaults from the TS side: the gRPC client reaches a real Python worker over TLS / mutual TLS with the
 * shared token, configured through the same environment variables docker/ sets; certificates are made at test
 * time by docker/gen-certs.sh. Also the Temporal TLS settings read from the environment.
 */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { execa, type ResultPromise } from 'execa';
import { Connection } from '@temporalio/client';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEnv } from '../src/env.js';
import { projectRoot, temporalCli } from '../src/paths.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import {
  connectTemporalClient,
  connectTemporalWorker,
  temporalTarget,
  temporalTls,
} from '../src/stack/temporal-connection.js';
import {
  createPythonWorkerClient,
  health,
  pythonWorkerClientSecurity,
  type PythonWorkerClient,
  type PythonWorkerClientSecurity,
} from '../src/python-worker-client.js';
import { freePort, tempDir } from './helpers.js';

const certs = tempDir('certs');
execFileSync('sh', [path.join(projectRoot, 'docker', 'gen-certs.sh'), certs, 'localhost', '127.0.0.1'], {
  stdio: 'ignore',
});
const file = (name: string) => path.join(certs, name);
const token = readFileSync(file('token'), 'utf8').trim();

/** Health over `client`, resolved to the gRPC status code (0 = OK) and message. */
async function call(client: PythonWorkerClient): Promise<{ code: number; details: string }> {
  try {
    await health(client, 10_000);
    return { code: status.OK, details: '' };
  } catch (err) {
    const e = err as ServiceError;
    return { code: e.code, details: e.details };
  } finally {
    client.close();
  }
}

describe('the worker client with TLS and the token', () => {
  let worker: PythonWorker;
  let mutual: PythonWorker;

  beforeAll(async () => {
    const tls = { cert: file('worker.pem'), key: file('worker.key') };
    [worker, mutual] = await Promise.all([
      startPythonWorker({ artifactRoot: tempDir('artifacts'), tls, token }),
      startPythonWorker({ artifactRoot: tempDir('artifacts'), tls: { ...tls, clientCa: file('ca.pem') }, token }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([worker?.stop(), mutual?.stop()]);
  });

  const fromEnv = (vars: Record<string, string>): PythonWorkerClientSecurity =>
    pythonWorkerClientSecurity(loadEnv(vars));

  it('reaches a TLS worker configured from VLMFLOW_WORKER_TLS_CA and VLMFLOW_WORKER_TOKEN_FILE', async () => {
    const security = fromEnv({ VLMFLOW_WORKER_TLS_CA: file('ca.pem'), VLMFLOW_WORKER_TOKEN_FILE: file('token') });
    expect(security.token).toBe(token);
    const reply = await health(createPythonWorkerClient(`localhost:${worker.port}`, security));
    expect(reply.jobCapacity).toBeGreaterThanOrEqual(1);
  });

  it('is refused with UNAUTHENTICATED and a clear message for a wrong or missing token', async () => {
    const tls = { ca: readFileSync(file('ca.pem')) };
    const wrong = await call(createPythonWorkerClient(`localhost:${worker.port}`, { tls, token: 'not-the-token' }));
    expect(wrong.code).toBe(status.UNAUTHENTICATED);
    expect(wrong.details).toMatch(/invalid worker token/);
    const missing = await call(createPythonWorkerClient(`localhost:${worker.port}`, { tls }));
    expect(missing.code).toBe(status.UNAUTHENTICATED);
    expect(missing.details).toMatch(/missing worker token.*VLMFLOW_WORKER_TOKEN/);
  });

  it('cannot talk plaintext to a TLS worker', async () => {
    const result = await call(createPythonWorkerClient(`127.0.0.1:${worker.port}`, { token }));
    expect(result.code).toBe(status.UNAVAILABLE);
  });

  it('checks the name in the certificate; VLMFLOW_WORKER_TLS_SERVER_NAME sets which name', async () => {
    const base = { VLMFLOW_WORKER_TLS_CA: file('ca.pem'), VLMFLOW_WORKER_TOKEN: token };
    const address = `127.0.0.1:${worker.port}`;
    const other = fromEnv({ ...base, VLMFLOW_WORKER_TLS_SERVER_NAME: 'not-in-the-cert.example' });
    expect((await call(createPythonWorkerClient(address, other))).code).toBe(status.UNAVAILABLE);
    const named = fromEnv({ ...base, VLMFLOW_WORKER_TLS_SERVER_NAME: 'localhost' });
    expect((await call(createPythonWorkerClient(address, named))).code).toBe(status.OK);
  });

  it('presents a client certificate to a mutual-TLS worker, and is refused without one', async () => {
    const base = { VLMFLOW_WORKER_TLS_CA: file('ca.pem'), VLMFLOW_WORKER_TOKEN: token };
    const withCert = fromEnv({
      ...base,
      VLMFLOW_WORKER_TLS_CLIENT_CERT: file('client.pem'),
      VLMFLOW_WORKER_TLS_CLIENT_KEY: file('client.key'),
    });
    expect((await call(createPythonWorkerClient(`localhost:${mutual.port}`, withCert))).code).toBe(status.OK);
    expect((await call(createPythonWorkerClient(`localhost:${mutual.port}`, fromEnv(base)))).code).toBe(
      status.UNAVAILABLE,
    );
  });

  it('sends the token on streaming calls too', async () => {
    const client = createPythonWorkerClient(`localhost:${worker.port}`, { tls: { ca: readFileSync(file('ca.pem')) } });
    const code = await new Promise<number>((resolve) => {
      const stream = client.watchJob({ jobId: 'nothing' }, new Metadata());
      stream.on('error', (err: ServiceError) => resolve(err.code));
      stream.on('end', () => resolve(status.OK));
      stream.on('data', () => undefined);
    });
    client.close();
    expect(code).toBe(status.UNAUTHENTICATED);
  });

  it('stops `vlmflow worker` at once, with the reason, when its token is wrong', async () => {
    const started = Date.now();
    const result = await execa('node', ['bin/vlmflow.js', 'worker'], {
      cwd: projectRoot,
      reject: false,
      env: {
        TEMPORAL_ADDRESS: '127.0.0.1:1', // never reached: the worker is checked first
        VLMFLOW_WORKER_ADDRESS: `localhost:${worker.port}`,
        VLMFLOW_WORKER_TLS_CA: file('ca.pem'),
        VLMFLOW_WORKER_TOKEN: 'not-the-token',
      },
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(
      /vlmflow: the Python worker at localhost:\d+ answered UNAUTHENTICATED: invalid worker token/,
    );
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('names the variable when a file or half a pair is missing', () => {
    expect(() => fromEnv({ VLMFLOW_WORKER_TLS_CA: file('nope.pem') })).toThrow(/VLMFLOW_WORKER_TLS_CA: cannot read/);
    expect(() => fromEnv({ VLMFLOW_WORKER_TLS_CLIENT_CERT: file('client.pem') })).toThrow(
      /VLMFLOW_WORKER_TLS_CLIENT_KEY/,
    );
    expect(() => fromEnv({ VLMFLOW_WORKER_TOKEN: 'a', VLMFLOW_WORKER_TOKEN_FILE: file('token') })).toThrow(/only one/);
  });
});

describe('the Temporal connection over TLS and mutual TLS, for real', () => {
  // The dev server speaks plaintext only, so a TLS terminator that demands a client certificate stands in front
  // of it, as a load balancer or Temporal's own frontend TLS would; both SDK connections go through it.
  let devServer: ResultPromise;
  let proxy: tls.Server;
  let address: string;

  beforeAll(async () => {
    const devPort = await freePort();
    devServer = execa(
      temporalCli,
      ['server', 'start-dev', '--headless', '--ip', '127.0.0.1', '--port', String(devPort), '--log-level', 'error'],
      { reject: false, stdio: 'ignore' },
    );
    proxy = tls.createServer(
      {
        cert: readFileSync(file('worker.pem')),
        key: readFileSync(file('worker.key')),
        ca: readFileSync(file('ca.pem')),
        requestCert: true,
        rejectUnauthorized: true,
        ALPNProtocols: ['h2'],
      },
      (socket) => {
        const upstream = net.connect(devPort, '127.0.0.1');
        socket.pipe(upstream).pipe(socket);
        socket.on('error', () => upstream.destroy());
        upstream.on('error', () => socket.destroy());
      },
    );
    proxy.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    address = `localhost:${(proxy.address() as net.AddressInfo).port}`;
    for (let i = 0; ; i++) {
      try {
        const plain = await Connection.connect({ address: `127.0.0.1:${devPort}`, connectTimeout: 1000 });
        await plain.close();
        break;
      } catch (err) {
        if (i > 120) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  });

  afterAll(async () => {
    proxy?.close();
    devServer?.kill('SIGTERM');
    await devServer;
  });

  const mtls = () => ({
    TEMPORAL_ADDRESS: address,
    TEMPORAL_TLS_CA: file('ca.pem'),
    TEMPORAL_TLS_CERT: file('client.pem'),
    TEMPORAL_TLS_KEY: file('client.key'),
  });

  it('connects a client and a worker connection with the CA and the client certificate', async () => {
    const target = temporalTarget(loadEnv(mtls()));
    const client = await connectTemporalClient(target);
    const info = await client.workflowService.getSystemInfo({});
    expect(info.serverVersion).toBeTruthy();
    await client.close();
    const worker = await connectTemporalWorker(target);
    await worker.close();
  });

  it('fails without the client certificate, or without the CA', async () => {
    const { TEMPORAL_TLS_CERT: _c, TEMPORAL_TLS_KEY: _k, ...noClientCert } = mtls();
    await expect(connectTemporalWorker(temporalTarget(loadEnv(noClientCert)))).rejects.toThrow();
    const { TEMPORAL_TLS_CA: _ca, ...noCa } = mtls();
    await expect(connectTemporalWorker(temporalTarget(loadEnv(noCa)))).rejects.toThrow();
  });
});

describe('the Temporal connection settings', () => {
  it('are plain unless a TEMPORAL_TLS variable is set', () => {
    expect(temporalTls(loadEnv({ TEMPORAL_ADDRESS: 'temporal:7233' }))).toBeUndefined();
    expect(temporalTls(loadEnv({ TEMPORAL_TLS: 'true' }))).toEqual({});
  });

  it('carry the CA, the client pair and the server name for mutual TLS', () => {
    const env = loadEnv({
      TEMPORAL_ADDRESS: 'temporal.example.com:7233',
      TEMPORAL_NAMESPACE: 'research',
      TEMPORAL_TLS_CA: file('ca.pem'),
      TEMPORAL_TLS_CERT: file('client.pem'),
      TEMPORAL_TLS_KEY: file('client.key'),
      TEMPORAL_TLS_SERVER_NAME: 'temporal',
    });
    const target = temporalTarget(env);
    expect(target.address).toBe('temporal.example.com:7233');
    expect(target.namespace).toBe('research');
    expect(target.tls?.serverNameOverride).toBe('temporal');
    expect(Buffer.from(target.tls!.serverRootCACertificate!).toString()).toContain('BEGIN CERTIFICATE');
    expect(Buffer.from(target.tls!.clientCertPair!.key).toString()).toContain('PRIVATE KEY');
  });

  it('refuse half a client pair, and a missing address without a dev server', () => {
    expect(() => temporalTls(loadEnv({ TEMPORAL_TLS_CERT: file('client.pem') }))).toThrow(/TEMPORAL_TLS_KEY/);
    expect(() => temporalTarget(loadEnv({}))).toThrow(/TEMPORAL_ADDRESS is not set/);
    expect(temporalTarget(loadEnv({}), '127.0.0.1:7233').tls).toBeUndefined();
  });
});
