/** Shared test helpers: free ports and temp folders. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export { freePort } from '../src/stack/ports.js';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `vlmflow-${prefix}-`));
}
