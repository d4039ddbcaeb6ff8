/** How the CLI words things: failures as sentences, stage tables, durations. */
import {
  ActivityFailure,
  ApplicationFailure,
  CancelledFailure,
  TerminatedFailure,
  TimeoutFailure,
} from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import type { StageSummary } from '../../workflows/definitions.js';

/** The innermost useful message of a workflow failure: "stage sft: CUDA out of memory ...". */
export function describeFailure(err: unknown): string {
  let cause: unknown = err instanceof WorkflowFailedError ? (err.cause ?? err) : err;
  let where = '';
  if (cause instanceof ActivityFailure) {
    where = `${cause.activityType} activity: `;
    cause = cause.cause ?? cause;
  }
  if (cause instanceof CancelledFailure) return 'it was cancelled';
  if (cause instanceof TerminatedFailure) return 'it was terminated';
  if (cause instanceof TimeoutFailure) return `${where}it timed out (${cause.timeoutType})`;
  if (cause instanceof ApplicationFailure) return `${where}${cause.message}${cause.type ? ` [${cause.type}]` : ''}`;
  return `${where}${cause instanceof Error ? cause.message : String(cause)}`;
}

/** How a run that did not complete ended, from the error its result rejects with (an exit code's name). */
export function endedBy(err: unknown): 'cancelled' | 'terminated' | 'timedOut' | 'failed' {
  const cause = err instanceof WorkflowFailedError ? err.cause : undefined;
  if (cause instanceof CancelledFailure) return 'cancelled';
  if (cause instanceof TerminatedFailure) return 'terminated';
  // The workflow's own timeout; an activity's timeout arrives wrapped in an ActivityFailure and fails the run.
  if (cause instanceof TimeoutFailure) return 'timedOut';
  return 'failed';
}

export function stageLines(stages: StageSummary[]): string[] {
  const width = Math.max(...stages.map((s) => s.name.length), 8);
  return stages.map((s) => {
    const mark = {
      completed: '✓',
      reused: '↺',
      running: '▶',
      paused: '‖',
      failed: '✗',
      cancelled: '✗',
      skipped: '-',
      pending: '·',
    }[s.status];
    const main = s.artifacts?.adapter ?? s.artifacts?.report ?? s.artifacts?.model ?? s.artifacts?.dataset ?? '';
    return `  ${mark} ${s.name.padEnd(width)}  ${s.status.padEnd(9)}  ${s.message ?? main}`;
  });
}

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

export function formatEta(seconds: number | null): string {
  return seconds === null ? '?' : formatDuration(seconds * 1000);
}
