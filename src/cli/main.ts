/** The vlmflow command line. Errors print as sentences with a non-zero exit code, not stack traces. */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { metricsAddressSchema } from '../env.js';
import { registerPipelineCommands } from './commands.js';
import { bundle } from './bundle.js';
import { ExitCode } from './exit-codes.js';
import { demo } from './demo.js';
import { worker } from './worker-command.js';

const program = new Command()
  .name('vlmflow')
  .description('Durable fine-tuning and inference for vision-language models, on Temporal.')
  // Usage errors throw (commander has printed them) instead of exiting 1, so they exit 2 below; subcommands
  // inherit this because they are added afterwards.
  .exitOverride();

program
  .command('demo')
  .description('start the local stack, run the offline demo and print where to look')
  .option('--keep', 'keep the stack running afterwards (Ctrl-C stops it)', false)
  .action(async (opts: { keep: boolean }) => {
    process.exitCode = await demo(opts);
  });

program
  .command('worker')
  .description('run the TS workers against TEMPORAL_ADDRESS and VLMFLOW_WORKER_ADDRESS (docker/, GPU hosts)')
  .option(
    '--metrics-address <ip:port>',
    "serve the Temporal SDK's metrics for Prometheus at http://<ip:port>/metrics (default: VLMFLOW_TEMPORAL_METRICS_ADDRESS; unset: none)",
    (value: string) => {
      const parsed = metricsAddressSchema.safeParse(value);
      if (!parsed.success) throw new InvalidArgumentError(parsed.error.issues[0]!.message);
      return parsed.data;
    },
  )
  .action(async (opts: { metricsAddress?: string }) => {
    process.exitCode = await worker({ metricsAddress: opts.metricsAddress });
  });

program
  .command('bundle')
  .description('write the workflow bundle `vlmflow worker` loads through VLMFLOW_WORKFLOW_BUNDLE (images build it)')
  .argument('<file>', 'where to write it, e.g. /app/workflow-bundle.js')
  .action(async (file: string) => {
    process.exitCode = await bundle(file);
  });

registerPipelineCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // --help and --version exit 0; anything else commander stops on is a usage error.
    process.exitCode = err.exitCode === 0 ? ExitCode.ok : ExitCode.invalid;
  } else {
    console.error(`vlmflow: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = ExitCode.failed;
  }
}
