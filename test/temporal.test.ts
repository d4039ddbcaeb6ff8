/**
 * The real Temporal stack: the dev server built by setup (through TestWorkflowEnvironment and through the
 * project's own launcher), a TS worker, and an activity that calls the real Python worker.
 */
import { Connection } from '@temporalio/client';
import { parseInputActivities } from '../activities/parse-input.js';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../activities/index.js';
import { temporalCli } from '../src/paths.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { startDevServer } from '../src/stack/temporal-dev-server.js';
import { createPythonWorkerClient, type PythonWorkerClient } from '../src/python-worker-client.js';
import { workflowsPath } from '../src/temporal-worker.js';
import { healthCheck } from '../workflows/index.js';
import { freePort, tempDir } from './helpers.js';

describe('healthCheck workflow on the real dev server', () => {
  let env: TestWorkflowEnvironment;
  let python: PythonWorker;
  let client: PythonWorkerClient;

  beforeAll(async () => {
    [env, python] = await Promise.all([
      TestWorkflowEnvironment.createLocal({
        server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
      }),
      startPythonWorker({ artifactRoot: tempDir('artifacts') }),
    ]);
    client = createPythonWorkerClient(python.address);
  });

  afterAll(async () => {
    client?.close();
    await Promise.all([env?.teardown(), python?.stop()]);
  });

  it('runs an activity that reports the Python worker Health', async () => {
    const taskQueue = `test-${randomUUID()}`;
    const gpuTaskQueue = `${taskQueue}-gpu`;
    const workflows = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowsPath,
      activities: parseInputActivities,
    });
    const activities = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: gpuTaskQueue,
      activities: createActivities(client),
    });
    const result = await workflows.runUntil(
      activities.runUntil(
        env.client.workflow.execute(healthCheck, {
          taskQueue,
          workflowId: `health-${randomUUID()}`,
          args: [{ gpuTaskQueue }],
        }),
      ),
    );
    expect(result.device).toBe('cpu');
    expect(result.jobCapacity).toBe(1);
    expect(result.versions.transformers).toMatch(/^5\./);
    expect(result.workerId).toContain(`:${python.port}:`);
  });
});

describe('the project dev-server launcher', () => {
  it('keeps workflow history in its SQLite file across a restart, with the UI and search attributes', async () => {
    const stateDir = tempDir('temporal');
    const [port, uiPort] = [await freePort(), await freePort()];
    const workflowId = `persisted-${randomUUID()}`;

    let server = await startDevServer({ stateDir, port, uiPort });
    let connection = await Connection.connect({ address: server.address });
    const { Client } = await import('@temporalio/client');
    let client = new Client({ connection });
    // Nothing polls this queue: the run stays open and must survive the restart.
    await client.workflow.start('healthCheck', { taskQueue: 'nobody-polls', workflowId });
    const registered = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    for (const key of searchAttributes) expect(Object.keys(registered.customAttributes)).toContain(key.name);
    const ui = await fetch(server.uiUrl);
    expect(ui.status).toBe(200);
    await connection.close();
    await server.stop();
    expect(server.process.exitCode ?? server.process.signalCode).not.toBeNull();

    server = await startDevServer({ stateDir, port, uiPort });
    connection = await Connection.connect({ address: server.address });
    client = new Client({ connection });
    const description = await client.workflow.getHandle(workflowId).describe();
    expect(description.status.name).toBe('RUNNING');
    await client.workflow.getHandle(workflowId).terminate('test done');
    await connection.close();
    await server.stop();
  });
});
