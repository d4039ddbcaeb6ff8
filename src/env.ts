/**
 * Process configuration from environment variables, validated once with zod. docker/ sets exactly
 * these names (test/docker.test.ts checks); docker/README.md lists them in its environment table.
 */
import { isIP } from 'node:net';
import { z } from 'zod';

const port = z.coerce.number().int().min(1).max(65535);

/**
 * ip:port the Temporal SDK's Prometheus endpoint binds (`0.0.0.0:9464`, `127.0.0.1:9464`, `[::]:9464`): the SDK
 * takes a socket address, so a host name is refused here with a sentence rather than by the SDK with its syntax.
 */
export const metricsAddressSchema = z.string().refine(
  (value) => {
    const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
    const ip = m?.[1] ?? m?.[2];
    const portNumber = Number(m?.[3]);
    return Boolean(ip && isIP(ip) === (m?.[1] ? 6 : 4) && portNumber >= 1 && portNumber <= 65535);
  },
  {
    message:
      'must be ip:port, e.g. 0.0.0.0:9464, 127.0.0.1:9464 or [::]:9464 (an IP address, not a host name; port 1-65535)',
  },
);

export const envSchema = z.object({
  /** host:port of a Temporal frontend; unset means "start the local dev server". */
  TEMPORAL_ADDRESS: z.string().min(1).optional(),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  /** TLS to TEMPORAL_ADDRESS with the system's roots (e.g. Temporal Cloud); implied by any TEMPORAL_TLS_* below. */
  TEMPORAL_TLS: z.stringbool().default(false),
  /** PEM file of the CA that signed the Temporal frontend's certificate (private clusters). */
  TEMPORAL_TLS_CA: z.string().min(1).optional(),
  /** PEM files of this client's certificate and key, for mutual TLS (both or neither). */
  TEMPORAL_TLS_CERT: z.string().min(1).optional(),
  TEMPORAL_TLS_KEY: z.string().min(1).optional(),
  /** Name to check in the frontend's certificate when it differs from the host in TEMPORAL_ADDRESS. */
  TEMPORAL_TLS_SERVER_NAME: z.string().min(1).optional(),
  /** Dev server ports when the project starts its own. */
  TEMPORAL_DEV_PORT: port.default(7233),
  TEMPORAL_DEV_UI_PORT: port.default(8233),
  /** host:port of the Python worker; unset means "start one locally". */
  VLMFLOW_WORKER_ADDRESS: z.string().min(1).optional(),
  /** TLS to VLMFLOW_WORKER_ADDRESS with the system's roots; implied by any VLMFLOW_WORKER_TLS_* below. */
  VLMFLOW_WORKER_TLS: z.stringbool().default(false),
  /** PEM file of the CA that signed the Python worker's certificate. */
  VLMFLOW_WORKER_TLS_CA: z.string().min(1).optional(),
  /** PEM files of this client's certificate and key, when the worker requires client certificates. */
  VLMFLOW_WORKER_TLS_CLIENT_CERT: z.string().min(1).optional(),
  VLMFLOW_WORKER_TLS_CLIENT_KEY: z.string().min(1).optional(),
  /** Name to check in the worker's certificate when it differs from the host in VLMFLOW_WORKER_ADDRESS. */
  VLMFLOW_WORKER_TLS_SERVER_NAME: z.string().min(1).optional(),
  /** The shared token the Python worker checks on every call (or a file holding it; not both). */
  VLMFLOW_WORKER_TOKEN: z.string().min(1).optional(),
  VLMFLOW_WORKER_TOKEN_FILE: z.string().min(1).optional(),
  VLMFLOW_WORKFLOW_TASK_QUEUE: z.string().min(1).default('vlmflow'),
  VLMFLOW_GPU_TASK_QUEUE: z.string().min(1).default('vlmflow-gpu'),
  VLMFLOW_ARTIFACT_ROOT: z.string().min(1).optional(),
  /**
   * A workflow bundle made by `vlmflow bundle` (the TS image builds one): the worker loads it instead of bundling
   * workflows/ at start, which takes seconds and needs the source.
   */
  VLMFLOW_WORKFLOW_BUNDLE: z.string().min(1).optional(),
  /**
   * ip:port of the TS worker's Prometheus endpoint: the Temporal SDK's metrics (task latencies, slots, polls,
   * workflow and activity outcomes) at /metrics. Unset serves none, as the SDK does; `vlmflow worker
   * --metrics-address` sets it too. Compose sets 0.0.0.0:9464.
   */
  VLMFLOW_TEMPORAL_METRICS_ADDRESS: metricsAddressSchema.optional(),
});

export type Env = z.infer<typeof envSchema>;

/**
 * Parses the environment; throws one error listing every bad variable. An empty variable counts as unset, as
 * compose's `${NAME:-}` passes one through.
 */
export function loadEnv(env: NodeJS.ProcessEnv = process.env): Env {
  const parsed = envSchema.safeParse(Object.fromEntries(Object.entries(env).filter(([, value]) => value !== '')));
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid environment:\n${lines.join('\n')}`);
  }
  return parsed.data;
}
