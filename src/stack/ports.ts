/**
 * Free TCP ports on 127.0.0.1 for the processes the stack starts. A port found free can be taken by another
 * process before the one it is meant for binds it, so callers that start a server on one retry on a clash
 * (`isPortClash`).
 */
import { createServer } from 'node:net';

/** A port the kernel says is free now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** A free port below 32768, where the kernel's own picks never are (Temporal keeps membership ports as smallint). */
export function lowFreePort(): Promise<number> {
  const candidate = 20_000 + Math.floor(Math.random() * 12_000);
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(lowFreePort()));
    server.listen(candidate, '127.0.0.1', () => server.close(() => resolve(candidate)));
  });
}

/** Whether a server failed to start because its port was taken. */
export function isPortClash(err: unknown): boolean {
  return /address already in use/i.test(String(err instanceof Error ? err.message : err));
}
