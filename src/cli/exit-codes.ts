/** What `vlmflow run` (and the commands that wait) exit with, so scripts and CI can tell outcomes apart. */
export const ExitCode = {
  /** The run completed (a flagged gate included; it is printed). */
  ok: 0,
  /** The run failed, or a command could not do what was asked. */
  failed: 1,
  /** The config or the command line is wrong; nothing was started. */
  invalid: 2,
  /** The run was cancelled. */
  cancelled: 3,
} as const;
