/**
 * What belongs to one run: its tag (from the first run id of its continue-as-new chain), the folder its stages
 * write under, and so the ids of its jobs. A workflow id started again after its run ended is a new run: it
 * neither attaches to the old run's jobs nor resumes from its checkpoints. `vlmflow retry` passes the old folder
 * on purpose. Deterministic, no Node built-ins: workflows and the CLI import it.
 */

/** A short, stable name for one run: the first 12 characters of the chain's first run id. */
export function runTag(firstExecutionRunId: string): string {
  return firstExecutionRunId.replace(/-/g, '').slice(0, 12);
}

/** Where a run's stages write when the config sets no outputUri: runs/<workflow id>/<run tag>. */
export function runOutputRoot(workflowId: string, firstExecutionRunId: string): string {
  return `runs/${workflowId}/${runTag(firstExecutionRunId)}`;
}
