/** The pipeline commands of the vlmflow CLI (run, status, follow, compare, list, cancel, pause, resume, retry, schedule). */
import { Argument, Option, type Command } from 'commander';
import { compare } from './compare.js';
import { ConfigFileError } from './config-file.js';
import { dev } from './dev.js';
import { doctor } from './doctor.js';
import { infer, inferTasks, type InferOptions, type InferTask } from './infer.js';
import { ExitCode } from './exit-codes.js';
import { wholeNumber } from './option-parsers.js';
import { run } from './run.js';
import { cancel, follow, list, pause, resume, retry, status } from './runs.js';
import { overlapPolicies, scheduleCommands, type CreateScheduleOptions } from './schedule.js';

/** Runs a command body; a bad config file exits with `invalid` after printing every problem. */
function action<A extends unknown[]>(fn: (...args: A) => Promise<number>) {
  return async (...args: A) => {
    try {
      process.exitCode = await fn(...args);
    } catch (err) {
      if (!(err instanceof ConfigFileError)) throw err;
      console.error(`vlmflow: ${err.message}`);
      process.exitCode = ExitCode.invalid;
    }
  };
}

export function registerPipelineCommands(program: Command): void {
  program
    .command('dev')
    .description('start Temporal (dev server + UI), the Python worker and the TS workers until Ctrl-C')
    .option('--no-demo-assets', "don't build the offline demo's tiny model and data")
    .action(action((opts: { demoAssets: boolean }) => dev(opts)));

  program
    .command('run')
    .description('validate a pipeline config (YAML or JSON), start it and follow it with a progress bar')
    .argument('<config>', 'pipeline config file (.yaml, .yml or .json)')
    .option('--id <workflowId>', 'workflow id (default <name>-<timestamp>)')
    .option('--detach', 'start it and return without following (Ctrl-C while following detaches too)', false)
    .action(action((file: string, opts: { id?: string; detach: boolean }) => run(file, opts)));

  program
    .command('status')
    .description("a run's stages, progress, last checkpoint and outcome (the exit code too: see README)")
    .argument('<workflowId>')
    .action(action((id: string) => status(id)));

  program
    .command('follow')
    .description('follow a run with the progress bar until it ends; Ctrl-C detaches, the run goes on')
    .argument('<workflowId>')
    .action(action((id: string) => follow(id)));

  program
    .command('compare')
    .description("one HTML page with two completed runs' metrics side by side and their training curves overlaid")
    .argument('<runA>', 'workflow id of a completed run')
    .argument('<runB>', 'workflow id of another completed run')
    .option('--out <file>', 'where to write the page (default compare-<runA>-vs-<runB>.html)')
    .action(action((a: string, b: string, opts: { out?: string }) => compare(a, b, opts)));

  program
    .command('list')
    .description('pipeline runs, newest first, filtered by the vlmflow search attributes')
    .option('--status <status>', 'running, paused, completed, failed or cancelled')
    .option('--model <model>', 'model id')
    .option('--stage <stage>', 'current stage')
    .option('--limit <n>', 'at most this many', wholeNumber('--limit', 1, 20), 20)
    .action(action((opts: { status?: string; model?: string; stage?: string; limit: number }) => list(opts)));

  program
    .command('cancel')
    .description('cancel a run: the running stage checkpoints and stops')
    .argument('<workflowId>')
    .action(action((id: string) => cancel(id)));

  program
    .command('pause')
    .description('pause a run: the running stage checkpoints, then the run waits for resume')
    .argument('<workflowId>')
    .option('--reason <text>')
    .action(action((id: string, opts: { reason?: string }) => pause(id, opts.reason)));

  program
    .command('resume')
    .description('resume a paused run from its last checkpoint')
    .argument('<workflowId>')
    .action(action((id: string) => resume(id)));

  program
    .command('retry')
    .description('start a failed or cancelled run again, reusing its finished stages and resuming from the checkpoint')
    .argument('<workflowId>')
    .option('--id <workflowId>', 'id of the new run')
    .option('--detach', 'start it and return without following', false)
    .action(action((id: string, opts: { id?: string; detach: boolean }) => retry(id, opts)));

  program
    .command('infer')
    .description('ask a model about local images or videos and print the answers')
    .addArgument(new Argument('<task>', 'what to ask').choices(inferTasks))
    .argument('<files...>', 'images (caption, vqa, ocr) or videos (video)')
    .option('--model <id>', 'hub id or local model folder', 'HuggingFaceTB/SmolVLM-Instruct')
    .option('--prompt <text>', 'the question (vqa, video) or an instruction override')
    .option('--max-new-tokens <n>', 'answer length cap', wholeNumber('--max-new-tokens', 1, 128), 128)
    .option('--frames <n>', 'frames sampled per video', wholeNumber('--frames', 1, 8), 8)
    .action(action((task: InferTask, files: string[], opts: InferOptions) => infer(task, files, opts)));

  program
    .command('doctor')
    .description('check the stack (Temporal, workers, Python worker, CUDA) and say what is missing')
    .action(action(() => doctor()));

  const schedule = program.command('schedule').description('Temporal Schedules that start pipeline runs');
  schedule
    .command('create')
    .description('run a pipeline config on a cron expression or an interval')
    .argument('<scheduleId>')
    .argument('<config>', 'pipeline config file, stored in the schedule as of now')
    .option('--cron <expression>', 'cron expression, e.g. "0 2 * * *" for 02:00 every night')
    .option('--every <duration>', 'interval, e.g. 6h or 1d')
    .addOption(
      new Option('--overlap <policy>', 'when the previous run is still going').choices(overlapPolicies).default('skip'),
    )
    .option('--paused', 'create it paused', false)
    .option('--note <text>')
    .action(action((id: string, file: string, opts: CreateScheduleOptions) => scheduleCommands.create(id, file, opts)));
  schedule
    .command('list')
    .description('all schedules')
    .action(action(() => scheduleCommands.list()));
  schedule
    .command('describe')
    .argument('<scheduleId>')
    .description('spec, state, next and recent runs')
    .action(action((id: string) => scheduleCommands.describe(id)));
  schedule
    .command('trigger')
    .argument('<scheduleId>')
    .description('start a run now')
    .action(action((id: string) => scheduleCommands.trigger(id)));
  schedule
    .command('pause')
    .argument('<scheduleId>')
    .option('--note <text>')
    .description('stop starting runs until unpaused')
    .action(action((id: string, opts: { note?: string }) => scheduleCommands.pause(id, opts.note)));
  schedule
    .command('unpause')
    .argument('<scheduleId>')
    .option('--note <text>')
    .description('start runs again')
    .action(action((id: string, opts: { note?: string }) => scheduleCommands.unpause(id, opts.note)));
  schedule
    .command('delete')
    .argument('<scheduleId>')
    .description('delete the schedule (its runs are kept)')
    .action(action((id: string) => scheduleCommands.delete(id)));
}
