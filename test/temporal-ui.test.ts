/**
 * The Temporal UI tells a run's story, checked in a real browser: headless Chromium (Debian's `chromium`, installed by
 * scripts/setup.sh; VLMFLOW_CHROMIUM overrides the path) driven by playwright-core, on the Web UI of the dev server,
 * with a workflow worker and scripted stage activities (test/scripted-activities.ts) so runs end in seconds.
 *
 * - A run started with `vlmflow run`: its summary and details, the activity summaries that tell SFT from DPO,
 *   current details that end in "completed" and fit their frame.
 * - A run started as the UI's Start Workflow form does (raw JSON, no summary): current details open with the same
 *   summary and end in the failure's reason, with no stacked fraction.
 * - A running run: current details name the stage; the Signal dialog offers pause and resume only; cancelled, its
 *   details end in "cancelled".
 * - An invalid config: the list, with the VlmflowStatus column added as README says, shows it failed with
 *   `invalid-config`.
 *
 *   npx vitest run test/temporal-ui.test.ts
 */
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { NativeConnection, Worker } from '@temporalio/worker';
import { execa } from 'execa';
import { randomUUID } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseInputActivities } from '../activities/parse-input.js';
import { createSchedule } from '../src/cli/schedule.js';
import { loadEnv } from '../src/env.js';
import { projectRoot } from '../src/paths.js';
import type { DevServer } from '../src/stack/temporal-dev-server.js';
import { heartbeatThrottle } from '../src/temporal-worker.js';
import { progressQuery } from '../workflows/definitions.js';
import { startDevServerOnFreePorts } from './durability-helpers.js';
import { tempDir } from './helpers.js';
import { newCalls, result, scriptedActivities, trainUntilCancelled, type TrainScript } from './scripted-activities.js';
import { quietTemporalLogs } from './temporal-helpers.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

const chromiumPath = process.env.VLMFLOW_CHROMIUM ?? '/usr/bin/chromium';
quietTemporalLogs();

const config = {
  name: 'ui-test',
  model: { id: 'tiny' },
  dataset: { sources: [{ uri: 'data/shapes/rows.jsonl' }] },
  dpo: { dataset: { sources: [{ uri: 'data/prefs/pairs.jsonl', layout: 'preference' }] } },
  // Every run's jobs carry its workflow id, which the scripted training reads.
  reuse: false,
};
const summary = 'SFT + DPO · tiny · shapes, prefs';
const configFile = path.join(tempDir('ui'), 'sft-dpo.json');
writeFileSync(configFile, JSON.stringify(config));

/** Training by workflow id: `ui-diverges-*` fails as a diverged run would, `ui-hangs-*` runs until cancelled. */
const calls = newCalls();
const train: TrainScript = (input) => {
  if (input.jobId.startsWith('ui-diverges-')) {
    throw ApplicationFailure.create({
      type: 'TrainingDiverged',
      message: 'loss is NaN at step 500/1500; lower the learning rate',
      nonRetryable: true,
    });
  }
  if (input.jobId.startsWith('ui-hangs-')) return trainUntilCancelled(input, calls);
  return Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` }));
};

/** What a markdown frame of the UI shows; measured in the frame by `measureFrame`. */
interface FrameView {
  text: string;
  /** The frame is tall enough for its lowest text (the UI sizes it once, on load). */
  fits: boolean;
  /** It drew a stacked fraction (<sup>/<sub>). */
  fraction: boolean;
}

// Runs in the browser, so it is a string: the project's TypeScript has no DOM types. A line holding only a
// no-break space (left there to be cut) is not text that must fit.
const measureFrame = `(() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let bottom = 0;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const rect of range.getClientRects()) bottom = Math.max(bottom, rect.bottom);
  }
  return {
    text: document.body.innerText.trim(),
    fits: bottom <= window.innerHeight,
    fraction: document.querySelector('sup, sub') !== null,
  };
})()`;

describe('the Temporal UI in a real browser', () => {
  let dev: DevServer;
  let browser: Browser;
  let client: Client;
  let closeAll: () => Promise<void>;
  const taskQueue = `ui-${randomUUID()}`;
  const gpuTaskQueue = `${taskQueue}-gpu`;

  beforeAll(async () => {
    if (!existsSync(chromiumPath)) {
      throw new Error(
        `no Chromium at ${chromiumPath}: scripts/setup.sh installs Debian's chromium (or set VLMFLOW_CHROMIUM)`,
      );
    }
    const workflowBundle = sharedWorkflowBundle();
    dev = await startDevServerOnFreePorts({ stateDir: tempDir('ui-temporal') });
    const connection = await NativeConnection.connect({ address: dev.address });
    const workers = await Promise.all([
      Worker.create({ connection, taskQueue, workflowBundle, activities: parseInputActivities }),
      Worker.create({
        connection,
        taskQueue: gpuTaskQueue,
        activities: scriptedActivities(calls, train),
        ...heartbeatThrottle,
      }),
    ]);
    const running = workers.map((w) => w.run());
    const clientConnection = await Connection.connect({ address: dev.address });
    client = new Client({ connection: clientConnection });
    browser = await chromium.launch({ executablePath: chromiumPath });
    closeAll = async () => {
      await browser.close();
      for (const w of workers) w.shutdown();
      await Promise.allSettled(running);
      await clientConnection.close();
      await connection.close();
      await dev.stop();
    };
  });

  afterAll(async () => {
    await closeAll?.();
  });

  const cli = (...args: string[]) =>
    execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), ...args], {
      reject: false,
      all: true,
      env: {
        TEMPORAL_ADDRESS: dev.address,
        VLMFLOW_WORKFLOW_TASK_QUEUE: taskQueue,
        VLMFLOW_GPU_TASK_QUEUE: gpuTaskQueue,
        VLMFLOW_LOG_LEVEL: 'warn',
      },
    });

  /** Starts a run as the UI's Start Workflow form does: the type by name, raw JSON, no summary or details. */
  const startLikeTheForm = (workflowId: string, input: unknown) =>
    client.workflow.start('fineTunePipeline', { taskQueue, workflowId, args: [input, { gpuTaskQueue }] });

  /** The run's page on its User Metadata tab. */
  async function metadataTab(workflowId: string): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await page.goto(`${dev.uiUrl}/namespaces/default/workflows/${workflowId}`);
    await page.getByRole('tab', { name: 'User Metadata' }).click();
    await page.getByText('Current Details').waitFor();
    return page;
  }

  /** The markdown frames of the tab (summary and details when the run has them, current details), once loaded. */
  async function frames(page: Page, expected: number): Promise<FrameView[]> {
    // A frame shows nothing until the UI has the text (current details come from a query to the worker).
    let views: FrameView[] = [];
    const loaded = async () => {
      const rendered = page.frames().filter((f) => f.url().includes('/render?content='));
      views = await Promise.all(
        rendered.map(async (frame) => {
          await frame.waitForLoadState('load'); // the UI sizes the frame on this load
          return frame.evaluate<FrameView>(measureFrame);
        }),
      );
      return views.length === expected && views.every((v) => v.text !== '');
    };
    await expect.poll(() => loaded().catch(() => false), { timeout: 20_000 }).toBe(true);
    return views;
  }

  it('shows a CLI run: its summary, details, stage summaries that tell SFT from DPO, final details that fit', async () => {
    const id = `ui-cli-${randomUUID()}`;
    const started = await cli('run', configFile, '--id', id, '--detach');
    expect(started.exitCode, started.all).toBe(0);
    await client.workflow.getHandle(id).result();

    const page = await metadataTab(id);
    const [summaryFrame, detailsFrame, current] = await frames(page, 3);
    expect(summaryFrame!.text).toBe(summary);
    expect(detailsFrame!.text).toContain('model tiny (LoRA, dtype auto)');
    expect(detailsFrame!.text).toContain('DPO on data/prefs/pairs.jsonl');
    expect(detailsFrame!.text).toContain('export the merged model');
    expect(current!.text.split('\n')).toEqual([
      summary,
      'completed',
      '✓ prepare · ✓ sft · ✓ prepare-preference · ✓ dpo · ✓ evaluate · ✓ export',
      expect.stringMatching(/^report: runs\/ui-cli-.*\/evaluate\/report\.html$/),
    ]);
    for (const frame of [summaryFrame!, detailsFrame!, current!]) expect(frame).toMatchObject({ fits: true });
    const events = await page.getByText('Events with Metadata').locator('xpath=../..').innerText();
    for (const title of ['prepare the SFT data (shapes)', 'SFT training (LoRA)', 'DPO training on the SFT adapter']) {
      expect(events).toContain(title);
    }
    // The timeline names each `train` activity by its stage.
    await page.getByRole('tab', { name: /History/ }).click();
    await expect
      .poll(() => page.locator('body').innerText(), { timeout: 20_000 })
      .toContain('train • DPO training on the SFT adapter');
    await page.close();
  });

  it('tells a run started like the Start Workflow form the same story, ending in the reason it failed', async () => {
    const id = `ui-diverges-${randomUUID()}`;
    const handle = await startLikeTheForm(id, { ...config, dpo: undefined });
    await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);

    const page = await metadataTab(id);
    await page.getByText('No summary available').waitFor();
    const [current] = await frames(page, 1);
    expect(current!.text.split('\n')).toEqual([
      'SFT · tiny · shapes',
      'failed at stage sft',
      '✓ prepare · ✗ sft · evaluate · export',
      'loss is NaN at step 500 / 1500; lower the learning rate',
    ]);
    expect(current).toMatchObject({ fits: true, fraction: false });
    await page.close();
  });

  it('shows a running stage, offers only pause and resume as signals, and ends in "cancelled"', async () => {
    const id = `ui-hangs-${randomUUID()}`;
    const handle = await startLikeTheForm(id, config);
    await expect.poll(async () => (await handle.query(progressQuery)).stage, { timeout: 20_000 }).toBe('sft');

    const page = await metadataTab(id);
    const [current] = await frames(page, 1);
    expect(current!.text.split('\n').slice(1)).toEqual([
      'running: stage sft (2 of 6)',
      '✓ prepare · ▶ sft · prepare-preference · dpo · evaluate · export',
      'step, loss and ETA: the Pending Activities tab',
    ]);
    await page.getByRole('button', { name: 'More Actions' }).click();
    await page.getByRole('menuitem', { name: 'Send a Signal' }).click();
    const dialog = page.locator('dialog[open]');
    await dialog.getByRole('button', { name: 'Select a signal' }).click();
    const offered = await dialog.getByRole('option').allInnerTexts();
    expect(offered.map((o) => o.trim().split(/\s+/)[0]).filter(Boolean)).toEqual(['pause', 'resume', 'Custom']);
    expect(offered[0]).toContain('Checkpoint the running stage and wait for resume');
    await page.close();

    await handle.cancel();
    await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    const after = await metadataTab(id);
    const [ended] = await frames(after, 1);
    expect(ended!.text.split('\n').slice(1)).toEqual([
      'cancelled at stage sft',
      '✓ prepare · ■ sft · prepare-preference · dpo · evaluate · export',
    ]);
    await after.close();
  });

  it('shows an invalid config as failed with VlmflowStatus invalid-config in the list', async () => {
    const id = `ui-invalid-${randomUUID()}`;
    const handle = await startLikeTheForm(id, { model: { id: 5 }, dataset: { sources: [] } });
    await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);

    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    await page.goto(`${dev.uiUrl}/namespaces/default/workflows`);
    // README: add the Vlmflow search attributes as columns (the table's gear, then + beside each).
    await page.getByTestId('workflows-summary-table-configuration-button').click();
    await page.getByRole('button', { name: 'Add VlmflowStatus column' }).click();
    await page.keyboard.press('Escape');
    const row = page.getByRole('row').filter({ hasText: id });
    await expect.poll(() => row.innerText(), { timeout: 20_000 }).toMatch(/Failed[\s\S]*invalid-config/);
    await page.close();
  });

  it('gives the runs a schedule starts the same summary and details', async () => {
    const env = loadEnv({ VLMFLOW_WORKFLOW_TASK_QUEUE: taskQueue, VLMFLOW_GPU_TASK_QUEUE: gpuTaskQueue });
    const id = `ui-schedule-${randomUUID()}`;
    const schedule = await createSchedule(client, env, id, configFile, {
      cron: '0 2 * * *',
      overlap: 'skip',
      paused: true,
    });
    const action = (await schedule.describe()).action;
    expect(action).toMatchObject({ staticSummary: summary });
    expect(action.staticDetails).toContain('**DPO** on `data/prefs/pairs.jsonl`');
    await schedule.delete();
  });
});
