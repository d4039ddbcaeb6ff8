/** Workflow for the schedule-to-start benchmark: N no-op activities, one after another. */
import { proxyActivities } from '@temporalio/workflow';

export interface NoopActivities {
  /** Returns the milliseconds from this attempt's scheduling to its start. */
  noop(): Promise<number>;
}

export async function noopActivities(count: number, taskQueue: string): Promise<number[]> {
  const { noop } = proxyActivities<NoopActivities>({ taskQueue, startToCloseTimeout: '30s' });
  const latencies: number[] = [];
  for (let i = 0; i < count; i++) latencies.push(await noop());
  return latencies;
}
