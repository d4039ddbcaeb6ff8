/**
 * The first step of every workflow: its raw input (JSON typed into the Temporal UI included) parsed with its zod
 * schema, and the run failed at once, not retryably, listing every bad field.
 *
 * Runs that started after Patches.recordedInput parse in a local activity (activities/parse-input.ts), so history
 * records the parsed config and a later schema change never reaches them; older runs parse inline, as they did.
 */
import { ApplicationFailure, proxyLocalActivities } from '@temporalio/workflow';
import type { z } from 'zod';
import type { ParsedInput, ParseInputActivities } from '../activities/parse-input.js';
import { formatIssues, parseConfig, type ConfigIssue } from '../src/config/config-issues.js';
import { FailureType } from '../src/config/failure-types.js';

export const parsers = proxyLocalActivities<ParseInputActivities>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: 3 },
});

/** The config of a recorded parse, or the InvalidConfig failure whose details carry every issue. */
export function configOrFail<T>(parsed: ParsedInput<T>): T {
  if (parsed.ok) return parsed.config;
  throw invalidConfig(parsed.message, parsed.issues);
}

/** The inline parse of runs that started before Patches.recordedInput. */
export function parseInputOrFail<S extends z.ZodType>(schema: S, raw: unknown, what: string): z.output<S> {
  const parsed = parseConfig(schema, raw);
  if (parsed.ok) return parsed.data;
  throw invalidConfig(formatIssues(what, parsed.issues), parsed.issues);
}

function invalidConfig(message: string, issues: ConfigIssue[]): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.InvalidConfig, message, nonRetryable: true, details: [issues] });
}
