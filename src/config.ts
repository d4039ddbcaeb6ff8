/**
 * Process configuration from environment variables, validated once with zod. docker/ sets exactly
 * these names; docs/configuration lists them.
 */
import { z } from 'zod';

const port = z.coerce.number().int().min(1).max(65535);

export const envSchema = z.object({
  /** host:port of a Temporal frontend; unset means "start the local dev server". */
  TEMPORAL_ADDRESS: z.string().min(1).optional(),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  /** Dev server ports when the project starts its own. */
  TEMPORAL_DEV_PORT: port.default(7233),
  TEMPORAL_DEV_UI_PORT: port.default(8233),
  /** host:port of the Python worker; unset means "start one locally". */
  VLMFLOW_WORKER_ADDRESS: z.string().min(1).optional(),
  VLMFLOW_WORKFLOW_TASK_QUEUE: z.string().min(1).default('vlmflow'),
  VLMFLOW_GPU_TASK_QUEUE: z.string().min(1).default('vlmflow-gpu'),
  VLMFLOW_ARTIFACT_ROOT: z.string().min(1).optional(),
});

export type Env = z.infer<typeof envSchema>;

/** Parses the environment; throws one error listing every bad variable. */
export function loadEnv(env: NodeJS.ProcessEnv = process.env): Env {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid environment:\n${lines.join('\n')}`);
  }
  return parsed.data;
}
