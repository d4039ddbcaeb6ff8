/**
 * The first step of every workflow: parse the raw input (JSON typed into the Temporal UI included) with its zod
 * schema, and fail the run at once, not retryably, listing every bad field.
 */
import { ApplicationFailure } from '@temporalio/workflow';
import type { z } from 'zod';
import { formatIssues, parseConfig } from '../src/config/config-issues.js';
import { FailureType } from '../src/config/failure-types.js';

/** Returns the parsed input, or throws an InvalidConfig failure whose details carry every issue. */
export function parseInputOrFail<S extends z.ZodType>(schema: S, raw: unknown, what: string): z.output<S> {
  const parsed = parseConfig(schema, raw);
  if (parsed.ok) return parsed.data;
  throw ApplicationFailure.create({
    type: FailureType.InvalidConfig,
    message: formatIssues(what, parsed.issues),
    nonRetryable: true,
    details: [parsed.issues],
  });
}
