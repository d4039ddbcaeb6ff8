/**
 * The activity slots of a GPU task queue worker: as many as its Python worker runs jobs at once (one GPU, one job),
 * and none while that Python worker does not answer Health. A TS worker whose Python worker died or is restarting
 * then stops taking GPU work, so the work waits in the task queue for a healthy host instead of being handed to a
 * dead one and failing there (each such failure would cost an attempt, and a shard or stage would be redone).
 *
 * Temporal asks for a slot before every poll (a Temporal SDK custom slot supplier), so the check runs once per task,
 * not per heartbeat.
 */
import type { ActivitySlotInfo, CustomSlotSupplier, SlotPermit } from '@temporalio/worker';
import { logger } from './logger.js';
import { health, type PythonWorkerClient } from './python-worker-client.js';

export interface GpuSlotOptions {
  /** Jobs the Python worker runs at once (its Health job_capacity). */
  capacity: number;
  /** How long to wait between Health checks while the Python worker does not answer. */
  retryMs?: number;
  /** Deadline of one Health check. */
  healthTimeoutMs?: number;
}

export function gpuSlotSupplier(
  client: PythonWorkerClient,
  opts: GpuSlotOptions,
): CustomSlotSupplier<ActivitySlotInfo> {
  const retryMs = opts.retryMs ?? 1_000;
  const healthTimeoutMs = opts.healthTimeoutMs ?? 5_000;
  let inUse = 0;
  let wake: (() => void) | undefined;
  let unhealthySince: number | undefined;

  /** Resolves after `ms`, or earlier when a slot is released; rejects when Temporal no longer needs the slot. */
  const pause = (ms: number, signal: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', aborted);
        resolve();
      };
      const aborted = () => {
        clearTimeout(timer);
        // The SDK expects the signal's own reason back (its AbortError).
        // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
        reject(signal.reason);
      };
      const timer = setTimeout(done, ms);
      const previous = wake;
      wake = () => {
        previous?.();
        done();
      };
      signal.addEventListener('abort', aborted, { once: true });
    });

  const pythonAnswers = async (): Promise<boolean> => {
    try {
      await health(client, healthTimeoutMs);
      if (unhealthySince !== undefined) {
        logger.info(
          { unavailableSeconds: (Date.now() - unhealthySince) / 1000 },
          'Python worker answers again: taking GPU work',
        );
      }
      unhealthySince = undefined;
      return true;
    } catch (err) {
      if (unhealthySince === undefined) {
        unhealthySince = Date.now();
        logger.warn({ err: String(err) }, 'Python worker does not answer Health: taking no GPU work until it does');
      }
      return false;
    }
  };

  return {
    type: 'custom',
    async reserveSlot(_ctx, abortSignal): Promise<SlotPermit> {
      for (;;) {
        if (abortSignal.aborted) throw abortSignal.reason;
        if (inUse < opts.capacity) {
          inUse++; // held while Health is asked, so two pollers never pass for one free slot
          if (await pythonAnswers()) return {};
          inUse--;
        }
        await pause(retryMs, abortSignal);
      }
    },
    tryReserveSlot(): SlotPermit | null {
      return null; // eager activities are off: the GPU queue is not the workflow queue
    },
    markSlotUsed(): void {},
    releaseSlot(): void {
      inUse--;
      const waiting = wake;
      wake = undefined;
      waiting?.();
    },
  };
}
