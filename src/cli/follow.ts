/**
 * Follows a running fineTunePipeline from the CLI: a live progress bar per stage (cli-progress) fed by the
 * workflow's `progress` query and its stage's heartbeat details (src/run-progress.ts), with step/total, loss and the
 * ETA the worker's step rate gives, or "waiting for a GPU"; then the outcome, the report path and an exit code.
 * Ctrl-C only detaches: the run lives in Temporal, not in this process (`followOrDetach`).
 */
import type { WorkflowHandle } from '@temporalio/client';
import cliProgress from 'cli-progress';
import type { PipelineProgress } from '../../workflows/definitions.js';
import { WAITING_FOR_GPU } from '../../activities/job-runner.js';
import { readPipelineProgress } from '../run-progress.js';
import type { fineTunePipeline, PipelineResult } from '../../workflows/fine-tune-pipeline.js';
import { ExitCode } from './exit-codes.js';
import { describeFailure, endedBy, formatDuration, formatEta, stageLines } from './print.js';

type PipelineHandle = WorkflowHandle<typeof fineTunePipeline>;

/** Follows the run until it ends or the person presses Ctrl-C, which detaches (exit 130) and leaves it running. */
export async function followOrDetach(handle: PipelineHandle): Promise<number> {
  const detach = new AbortController();
  const onSigint = () => detach.abort();
  process.once('SIGINT', onSigint);
  try {
    return await followPipeline(handle, { signal: detach.signal });
  } finally {
    process.off('SIGINT', onSigint);
  }
}

export async function followPipeline(
  handle: PipelineHandle,
  opts: { pollMs?: number; out?: NodeJS.WriteStream; signal?: AbortSignal } = {},
): Promise<number> {
  const out = opts.out ?? process.stdout;
  const started = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      format: '  {stage} [{bar}] {value}/{total} {unit} | loss {loss} | ETA {eta}',
      hideCursor: true,
      clearOnComplete: true,
      stream: out,
      noTTYOutput: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let shownStage: string | null = null;
  let barActive = false;
  let lastQueryOk = Date.now();
  let hinted = false;
  const printed = new Set<string>();

  const poll = async () => {
    let p: PipelineProgress;
    try {
      p = await readPipelineProgress(handle);
      lastQueryOk = Date.now();
    } catch {
      if (!hinted && Date.now() - lastQueryOk > 30_000) {
        hinted = true;
        out.write('  (no workflow worker answers yet: is `vlmflow dev` or `vlmflow worker` running?)\n');
      }
      return;
    }
    for (const s of p.stages) {
      if ((s.status === 'completed' || s.status === 'reused') && !printed.has(s.name)) {
        printed.add(s.name);
        if (barActive) {
          bar.stop();
          barActive = false;
        }
        out.write(`${stageLines([s])[0]}\n`);
      }
    }
    if (p.stage !== shownStage && p.stage && !printed.has(p.stage)) {
      if (barActive) bar.stop();
      shownStage = p.stage;
      bar.start(Math.max(p.totalSteps, 1), p.step, payload(p));
      barActive = true;
    } else if (barActive) {
      bar.setTotal(Math.max(p.totalSteps, 1));
      bar.update(p.step, payload(p));
    }
  };

  const id = handle.workflowId;
  const detached = new Promise<'detached'>((resolve) => {
    if (opts.signal?.aborted) resolve('detached');
    opts.signal?.addEventListener('abort', () => resolve('detached'), { once: true });
  });
  const timer = setInterval(() => void poll(), opts.pollMs ?? 1000);
  try {
    const result = await Promise.race([handle.result(), detached]);
    clearInterval(timer);
    if (result === 'detached') {
      if (barActive) bar.stop();
      out.write(
        `\nDetached from ${id}; the run goes on without this terminal. Follow it again with \`vlmflow follow ${id}\`, ` +
          `look at it with \`vlmflow status ${id}\`, or stop it with \`vlmflow cancel ${id}\`.\n`,
      );
      return ExitCode.detached;
    }
    await poll();
    if (barActive) bar.stop();
    printResult(out, id, result, Date.now() - started);
    return ExitCode.ok;
  } catch (err) {
    clearInterval(timer);
    if (barActive) bar.stop();
    const outcome = endedBy(err);
    if (outcome === 'cancelled') {
      out.write(`Run ${id} was cancelled; checkpoints are kept. \`vlmflow retry ${id}\` resumes it.\n`);
      return ExitCode.cancelled;
    }
    out.write(`Run ${id} ${outcome === 'failed' ? 'failed' : 'ended'}: ${describeFailure(err)}\n`);
    out.write(
      `\`vlmflow status ${id}\` shows the stages; \`vlmflow retry ${id}\` resumes from the stage that did not finish.\n`,
    );
    return ExitCode[outcome];
  }
}

function payload(p: PipelineProgress) {
  return {
    stage:
      `${p.stage ?? ''}${p.status === 'paused' ? ' (paused)' : p.phase === WAITING_FOR_GPU ? ` (${WAITING_FOR_GPU})` : ''}`.padEnd(
        10,
      ),
    unit: p.stage === 'sft' || p.stage === 'dpo' ? 'steps' : 'items',
    loss: p.loss === null ? '-' : p.loss.toFixed(4),
    eta: formatEta(p.etaSeconds),
  };
}

export function printResult(out: NodeJS.WritableStream, workflowId: string, result: PipelineResult, ms?: number) {
  out.write(
    `Run ${workflowId} ${result.status === 'completed' ? 'completed' : 'completed, but the gate flagged it'}${ms ? ` in ${formatDuration(ms)}` : ''}.\n`,
  );
  for (const line of stageLines(result.stages)) out.write(`${line}\n`);
  const headline = Object.entries(result.metrics).filter(
    ([k]) => !k.includes('/delta') && !k.includes('/better') && !k.endsWith('items_per_second'),
  );
  if (headline.length) {
    out.write('Metrics:\n');
    for (const [k, v] of headline) out.write(`  ${k.padEnd(28)} ${v.toFixed(4)}\n`);
  }
  if (result.gate) out.write(`Gate: ${result.gate.message}\n`);
  if (result.adapterUri) out.write(`Adapter: ${result.adapterUri}\n`);
  if (result.modelUri) out.write(`Model:   ${result.modelUri}\n`);
  if (result.reportUri) out.write(`Report:  ${result.reportUri}\n`);
}
