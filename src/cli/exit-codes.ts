/**
 * What `vlmflow` exits with, so scripts and CI can tell outcomes apart. `run`, `retry`, `follow` and `status`
 * report the run's outcome; the other commands 0 when they did what was asked, 1 when not, 2 for a usage error.
 */
export const ExitCode = {
  /** The run completed (a flagged gate included; it is printed), or the run is still going (`status`). */
  ok: 0,
  /** The run failed, or a command could not do what was asked. */
  failed: 1,
  /** The config or the command line is wrong (unknown option or command, missing or bad argument); nothing was started. */
  invalid: 2,
  /** The run was cancelled. */
  cancelled: 3,
  /** The run was terminated (`temporal workflow terminate`, the UI's Terminate, or a schedule's overlap policy). */
  terminated: 4,
  /** The run hit its workflow execution or run timeout. */
  timedOut: 5,
  /** Ctrl-C while following: the CLI detached, the run goes on (128 + SIGINT, as shells report it). */
  detached: 130,
} as const;
