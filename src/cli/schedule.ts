/**
 * `vlmflow schedule create|list|describe|trigger|pause|unpause|delete`: Temporal Schedules that start
 * fineTunePipeline runs on a cron expression or an interval (e.g. nightly retraining on a growing dataset),
 * with an overlap policy for when the previous run is still going.
 */
import { ScheduleNotFoundError, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import { fineTunePipeline } from '../../workflows/fine-tune-pipeline.js';
import { startMetadata } from '../../workflows/run-story.js';
import type { Env } from '../env.js';
import { readConfigFile } from './config-file.js';
import { withClient } from './connect.js';
import { ExitCode } from './exit-codes.js';

export const overlapPolicies = [
  'skip',
  'buffer_one',
  'buffer_all',
  'cancel_other',
  'terminate_other',
  'allow_all',
] as const;
export type OverlapPolicy = (typeof overlapPolicies)[number];

export interface CreateScheduleOptions {
  cron?: string;
  every?: string;
  overlap: OverlapPolicy;
  paused: boolean;
  note?: string;
}

/** Creates the schedule; the config file is validated and stored in it as of now. */
export async function createSchedule(
  client: Client,
  env: Env,
  scheduleId: string,
  file: string,
  opts: CreateScheduleOptions,
) {
  if (!opts.cron === !opts.every) throw new Error('give exactly one of --cron "<expression>" or --every <duration>');
  if (!overlapPolicies.includes(opts.overlap)) {
    throw new Error(`--overlap must be one of ${overlapPolicies.join(', ')}`);
  }
  const { raw, config } = readConfigFile(file);
  return client.schedule.create({
    scheduleId,
    spec: opts.cron
      ? { cronExpressions: [opts.cron] }
      : { intervals: [{ every: opts.every as `${number}${'s' | 'm' | 'h' | 'd'}` }] },
    action: {
      type: 'startWorkflow',
      workflowType: fineTunePipeline,
      workflowId: scheduleId,
      taskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      args: [raw, { gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE }],
      // Every run the schedule starts shows what it trains in the UI's summary and details.
      ...startMetadata(config),
    },
    policies: { overlap: ScheduleOverlapPolicy[opts.overlap.toUpperCase() as keyof typeof ScheduleOverlapPolicy] },
    state: { paused: opts.paused, note: opts.note ?? `created by vlmflow from ${file}` },
  });
}

function notFound(scheduleId: string): Error {
  return new Error(`there is no schedule ${scheduleId}; \`vlmflow schedule list\` shows them`);
}

async function onSchedule<T>(scheduleId: string, fn: (client: Client) => Promise<T>): Promise<T> {
  return withClient(async ({ client }) => {
    try {
      return await fn(client);
    } catch (err) {
      if (err instanceof ScheduleNotFoundError) throw notFound(scheduleId);
      throw err;
    }
  });
}

export const scheduleCommands = {
  create(scheduleId: string, file: string, opts: CreateScheduleOptions): Promise<number> {
    return withClient(async ({ client, env }) => {
      await createSchedule(client, env, scheduleId, file, opts);
      console.log(
        `Schedule ${scheduleId} created (${opts.cron ? `cron "${opts.cron}"` : `every ${opts.every}`}, overlap ${opts.overlap}${opts.paused ? ', paused' : ''}).`,
      );
      return ExitCode.ok;
    });
  },

  list(): Promise<number> {
    return withClient(async ({ client }) => {
      let any = false;
      for await (const s of client.schedule.list()) {
        any = true;
        const next = s.info.nextActionTimes[0]?.toISOString() ?? '-';
        const spec = s.spec?.calendars?.length
          ? 'calendar'
          : s.spec?.intervals?.map((i) => `every ${String(i.every)}`).join(', ');
        console.log(`${s.scheduleId}  ${s.state.paused ? 'paused ' : 'active '}  ${spec ?? ''}  next ${next}`);
      }
      if (!any) console.log('No schedules.');
      return ExitCode.ok;
    });
  },

  describe(scheduleId: string): Promise<number> {
    return onSchedule(scheduleId, async (client) => {
      const d = await client.schedule.getHandle(scheduleId).describe();
      console.log(`${scheduleId}: ${d.state.paused ? 'paused' : 'active'}${d.state.note ? ` (${d.state.note})` : ''}`);
      console.log(`  overlap: ${d.policies.overlap}`);
      console.log(
        `  next runs: ${
          d.info.nextActionTimes
            .slice(0, 3)
            .map((t) => t.toISOString())
            .join(', ') || '-'
        }`,
      );
      console.log(`  runs started: ${d.info.numActionsTaken}, skipped for overlap: ${d.info.numActionsSkippedOverlap}`);
      for (const r of d.info.recentActions.slice(-5)) {
        console.log(`  ${r.takenAt.toISOString()}  ${r.action.workflow.workflowId}`);
      }
      return ExitCode.ok;
    });
  },

  trigger(scheduleId: string): Promise<number> {
    return onSchedule(scheduleId, async (client) => {
      await client.schedule.getHandle(scheduleId).trigger();
      console.log(`Schedule ${scheduleId} triggered: a run starts now.`);
      return ExitCode.ok;
    });
  },

  pause(scheduleId: string, note?: string): Promise<number> {
    return onSchedule(scheduleId, async (client) => {
      await client.schedule.getHandle(scheduleId).pause(note ?? 'paused with vlmflow');
      console.log(`Schedule ${scheduleId} paused; \`vlmflow schedule unpause ${scheduleId}\` resumes it.`);
      return ExitCode.ok;
    });
  },

  unpause(scheduleId: string, note?: string): Promise<number> {
    return onSchedule(scheduleId, async (client) => {
      await client.schedule.getHandle(scheduleId).unpause(note ?? 'unpaused with vlmflow');
      console.log(`Schedule ${scheduleId} active again.`);
      return ExitCode.ok;
    });
  },

  delete(scheduleId: string): Promise<number> {
    return onSchedule(scheduleId, async (client) => {
      await client.schedule.getHandle(scheduleId).delete();
      console.log(`Schedule ${scheduleId} deleted; runs it started are not affected.`);
      return ExitCode.ok;
    });
  },
};
