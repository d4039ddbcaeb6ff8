/**
 * The CLI's connection to Temporal: TEMPORAL_ADDRESS (with its TLS settings) or the dev server `vlmflow dev`
 * starts on 127.0.0.1:TEMPORAL_DEV_PORT. A failure says what to start or set, not a stack trace.
 */
import { Client } from '@temporalio/client';
import { loadEnv, type Env } from '../env.js';
import { connectTemporalClient, temporalTarget } from '../stack/temporal-connection.js';

export interface Connected {
  client: Client;
  env: Env;
  address: string;
  close(): Promise<void>;
}

export async function connect(env: Env = loadEnv()): Promise<Connected> {
  const target = temporalTarget(env, `127.0.0.1:${env.TEMPORAL_DEV_PORT}`);
  try {
    const connection = await connectTemporalClient(target);
    await connection.workflowService.getSystemInfo({});
    return {
      client: new Client({ connection, namespace: target.namespace }),
      env,
      address: target.address,
      close: () => connection.close(),
    };
  } catch (err) {
    const how = env.TEMPORAL_ADDRESS
      ? 'check TEMPORAL_ADDRESS and its TLS settings'
      : 'start the local stack with `vlmflow dev` in another terminal, or set TEMPORAL_ADDRESS';
    throw new Error(`Temporal does not answer at ${target.address} (${firstLine(err)}); ${how}.`);
  }
}

/** Runs `fn` with a connection and closes it afterwards. */
export async function withClient<T>(fn: (c: Connected) => Promise<T>): Promise<T> {
  const connected = await connect();
  try {
    return await fn(connected);
  } finally {
    await connected.close();
  }
}

export function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}
