/**
 * Turns zod issues into lines a person can act on: the field's path, what is wrong, and the accepted
 * values or keys. Shared by the workflows (input parsed as their first step) and the CLI (validation before
 * starting anything), so both say the same thing. No Node built-ins: workflows import it.
 */
import type { z } from 'zod';

/** One bad field, e.g. { field: 'sft.training.learningRate', problem: 'must be > 0' }. */
export interface ConfigIssue {
  field: string;
  problem: string;
}

/** Parses `input` with `schema`; returns the data or every bad field (never just the first). */
export function parseConfig<S extends z.ZodType>(
  schema: S,
  input: unknown,
): { ok: true; data: z.output<S> } | { ok: false; issues: ConfigIssue[] } {
  const parsed = schema.safeParse(input);
  if (parsed.success) return { ok: true, data: parsed.data };
  return { ok: false, issues: parsed.error.issues.flatMap((issue) => describeIssue(schema, input, issue)) };
}

/** "3 fields are wrong:\n  - a.b: ..." */
export function formatIssues(what: string, issues: ConfigIssue[]): string {
  const head =
    issues.length === 1 ? `1 field of the ${what} is wrong` : `${issues.length} fields of the ${what} are wrong`;
  return `${head}:\n${issues.map((i) => `  - ${i.field}: ${i.problem}`).join('\n')}`;
}

function describeIssue(root: z.ZodType, input: unknown, issue: z.core.$ZodIssue): ConfigIssue[] {
  const path = issue.path.map(String);
  const field = (extra: string[] = []) => [...path, ...extra].join('.') || '(the whole config)';
  switch (issue.code) {
    case 'unrecognized_keys': {
      const accepted = objectKeys(schemaAt(root, path));
      return issue.keys.map((key) => ({
        field: field([key]),
        problem: `unknown field${accepted.length ? `; accepted fields here: ${accepted.join(', ')}` : ''}`,
      }));
    }
    case 'invalid_value':
      return [{ field: field(), problem: `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}` }];
    case 'invalid_type':
      return [
        {
          field: field(),
          problem:
            valueAt(input, path) === undefined
              ? `is required (${issue.expected})`
              : `must be ${article(issue.expected)}, not ${JSON.stringify(valueAt(input, path))}`,
        },
      ];
    case 'too_small':
      return [
        { field: field(), problem: bound('at least', 'more than', issue.minimum, issue.inclusive, issue.origin) },
      ];
    case 'too_big':
      return [{ field: field(), problem: bound('at most', 'less than', issue.maximum, issue.inclusive, issue.origin) }];
    case 'invalid_union':
      return [{ field: field(), problem: issue.message }];
    default:
      return [{ field: field(), problem: issue.message }];
  }
}

function bound(incl: string, excl: string, value: unknown, inclusive: boolean | undefined, origin: string): string {
  const n = String(value);
  if (origin === 'array') return `needs ${inclusive === false ? excl : incl} ${n} item(s)`;
  if (origin === 'string') return `needs ${inclusive === false ? excl : incl} ${n} character(s)`;
  return `must be ${inclusive === false ? excl : incl} ${n}`;
}

function article(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

function valueAt(input: unknown, path: string[]): unknown {
  let current = input;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}

/** Walks object shapes, arrays and wrappers (optional, default, nullable) down to the schema at `path`. */
function schemaAt(schema: z.ZodType, path: string[]): z.ZodType | undefined {
  let current: unknown = schema;
  for (const key of [undefined, ...path]) {
    current = unwrap(current);
    if (key === undefined) continue;
    const def = (current as { def?: { type?: string; shape?: Record<string, unknown>; element?: unknown } })?.def;
    if (def?.type === 'object') current = def.shape?.[key];
    else if (def?.type === 'array') current = def.element;
    else return undefined;
  }
  return unwrap(current) as z.ZodType | undefined;
}

function unwrap(schema: unknown): unknown {
  let current = schema as { def?: { type?: string; innerType?: unknown } } | undefined;
  while (current?.def && ['optional', 'default', 'nullable', 'prefault'].includes(current.def.type ?? '')) {
    current = current.def.innerType as typeof current;
  }
  return current;
}

function objectKeys(schema: z.ZodType | undefined): string[] {
  const def = (schema as { def?: { type?: string; shape?: Record<string, unknown> } } | undefined)?.def;
  return def?.type === 'object' && def.shape ? Object.keys(def.shape) : [];
}
