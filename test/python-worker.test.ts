/** The real Python worker, started with execa on a free port, answers Health through the generated client. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import {
  createPythonWorkerClient,
  health,
  waitForReady,
  type PythonWorkerClient,
} from '../src/python-worker-client.js';
import { tempDir } from './helpers.js';

describe('Python worker over gRPC', () => {
  let worker: PythonWorker;
  let client: PythonWorkerClient;
  const artifactRoot = tempDir('artifacts');

  beforeAll(async () => {
    worker = await startPythonWorker({ artifactRoot });
    client = createPythonWorkerClient(worker.address);
    await waitForReady(client);
  });

  afterAll(async () => {
    client?.close();
    await worker?.stop();
  });

  it('reports device, library versions and job capacity', async () => {
    const reply = await health(client);
    expect(['cpu', 'cuda']).toContain(reply.device);
    expect(reply.jobCapacity).toBeGreaterThanOrEqual(1);
    expect(reply.jobsRunning).toBe(0);
    for (const lib of ['python', 'torch', 'transformers', 'trl', 'peft', 'vlmflow-worker']) {
      expect(reply.versions[lib], lib).toMatch(/^\d+\.\d+/);
    }
    expect(reply.workerId).toContain(`:${worker.port}:${worker.pid}`);
    expect(reply.artifactRoot).toBe(artifactRoot);
  });

  it('refuses to start a second worker on a port in use, with a sentence', async () => {
    await expect(startPythonWorker({ artifactRoot, port: worker.port })).rejects.toThrow(/in use/);
  });

  it('stops on SIGTERM with exit code 0', async () => {
    const other = await startPythonWorker({ artifactRoot });
    await other.stop();
    const result = await other.process;
    expect(result.exitCode).toBe(0);
  });
});
