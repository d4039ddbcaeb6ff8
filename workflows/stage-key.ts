/**
 * Content keys for stage reuse. A stage's key is a hash of everything that decides its output: the model,
 * the settings, and the content fingerprints of its inputs (the prepared dataset's fingerprint comes from the
 * worker, which hashes the data itself). Two runs whose stage keys match share the worker job named by the key:
 * the second attaches to the first's recorded result instead of training again. Deterministic, no Node built-ins.
 */

/** JSON with object keys sorted, so equal values always give equal text. */
export function stableStringify(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableStringify(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** A 106-bit hex digest (two cyrb53 lanes): plenty to tell stage settings apart, and cheap in a workflow. */
export function digest(text: string): string {
  const lane = (seed: number) => {
    let h1 = 0xdeadbeef ^ seed;
    let h2 = 0x41c6ce57 ^ seed;
    for (let i = 0; i < text.length; i++) {
      const ch = text.charCodeAt(i);
      h1 = Math.imul(h1 ^ ch, 2654435761);
      h2 = Math.imul(h2 ^ ch, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
    return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(16).padStart(14, '0');
  };
  return lane(1) + lane(2);
}

/** `<stage>-<digest>`, or null when an input has no fingerprint (then nothing can be safely reused). */
export function stageKey(stage: string, inputs: Record<string, unknown>, fingerprints: string[]): string | null {
  if (fingerprints.some((f) => !f)) return null;
  return `${stage}-${digest(stableStringify({ stage, inputs, fingerprints })).slice(0, 24)}`;
}
