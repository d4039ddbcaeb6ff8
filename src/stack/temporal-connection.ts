/**
 * Connections to Temporal from the environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, and TLS or mutual TLS
 * for a cluster or Temporal Cloud (TEMPORAL_TLS, TEMPORAL_TLS_CA, TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY,
 * TEMPORAL_TLS_SERVER_NAME). The dev server the project starts itself is always plain loopback.
 */
import { Connection, type TLSConfig } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { readFileSync } from 'node:fs';
import type { Env } from '../env.js';

export interface TemporalTarget {
  address: string;
  namespace: string;
  tls?: TLSConfig;
}

/** Reads a file (PEM, token) named by an environment variable; the error names the variable. */
export function readEnvFile(variable: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`${variable}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/** The TLS settings for TEMPORAL_ADDRESS, or undefined for a plain connection. */
export function temporalTls(env: Env): TLSConfig | undefined {
  const { TEMPORAL_TLS_CA: ca, TEMPORAL_TLS_CERT: cert, TEMPORAL_TLS_KEY: key } = env;
  const serverName = env.TEMPORAL_TLS_SERVER_NAME;
  if (!env.TEMPORAL_TLS && !ca && !cert && !key && !serverName) return undefined;
  if (Boolean(cert) !== Boolean(key)) {
    throw new Error('TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY: mutual TLS needs both the certificate and its key');
  }
  return {
    ...(serverName ? { serverNameOverride: serverName } : {}),
    ...(ca ? { serverRootCACertificate: readEnvFile('TEMPORAL_TLS_CA', ca) } : {}),
    ...(cert && key
      ? { clientCertPair: { crt: readEnvFile('TEMPORAL_TLS_CERT', cert), key: readEnvFile('TEMPORAL_TLS_KEY', key) } }
      : {}),
  };
}

/**
 * Where to connect: TEMPORAL_ADDRESS with its TLS settings, else the dev server the caller started.
 * Throws when neither is there, naming the variable to set.
 */
export function temporalTarget(env: Env, devServerAddress?: string): TemporalTarget {
  if (env.TEMPORAL_ADDRESS) {
    return { address: env.TEMPORAL_ADDRESS, namespace: env.TEMPORAL_NAMESPACE, tls: temporalTls(env) };
  }
  if (devServerAddress) return { address: devServerAddress, namespace: env.TEMPORAL_NAMESPACE };
  throw new Error('TEMPORAL_ADDRESS is not set: give the host:port of a Temporal frontend (e.g. temporal:7233)');
}

/** A client connection (starting and querying workflows). */
export function connectTemporalClient(target: TemporalTarget): Promise<Connection> {
  return Connection.connect({ address: target.address, tls: target.tls });
}

/** A worker connection (polling task queues). */
export function connectTemporalWorker(target: TemporalTarget): Promise<NativeConnection> {
  return NativeConnection.connect({ address: target.address, tls: target.tls });
}
