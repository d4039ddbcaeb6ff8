/**
 * The `type` of every ApplicationFailure the activities throw, shared with the workflows (which branch on
 * them) and the CLI (which prints them). Each says when it is thrown and whether Temporal retries it.
 */
export const FailureType = {
  /** The request or config is wrong (gRPC INVALID_ARGUMENT). Not retried. */
  InvalidArgument: 'InvalidArgument',
  /** The dataset has problems (missing/corrupt images, too many rows dropped). Not retried. */
  BadData: 'BadData',
  /** A model, adapter, dataset or file does not exist (gRPC NOT_FOUND). Not retried. */
  NotFound: 'NotFound',
  /** The worker lacks what the job needs, e.g. CUDA for 4-bit (gRPC FAILED_PRECONDITION). Not retried. */
  FailedPrecondition: 'FailedPrecondition',
  /** The device ran out of memory; details carry the figures. Not retried as is (the pipeline may halve the micro-batch). */
  OutOfMemory: 'OutOfMemory',
  /** The artifact store could not be written (read-only, full). Not retried. */
  Storage: 'StorageError',
  /** The worker does not implement this RPC yet (gRPC UNIMPLEMENTED). Not retried. */
  Unimplemented: 'Unimplemented',
  /** The worker cannot be reached or is restarting (gRPC UNAVAILABLE). Retried. */
  WorkerUnavailable: 'WorkerUnavailable',
  /** Every job slot of the worker is taken by other work: the stage waits for a GPU. Retried without limit. */
  WorkerBusy: 'WorkerBusy',
  /** The worker refused this caller: wrong token, client certificate or CA (UNAUTHENTICATED, TLS). Not retried. */
  Unauthorized: 'Unauthorized',
  /** The job sent no event for the worker's stuck limit and was stopped. Retried; it resumes. */
  JobStuck: 'JobStuck',
  /** The job stopped without our asking (worker shutdown, job process died). Retried; it resumes. */
  JobInterrupted: 'JobInterrupted',
  /** The worker hit a bug or its job process crashed. Retried. */
  Internal: 'WorkerInternal',
  /** The pipeline input did not parse. Not retried. */
  InvalidConfig: 'InvalidConfig',
  /** The tuned model did not beat the base by the configured margin. Not retried. */
  GateFailed: 'GateFailed',
} as const;

export type FailureTypeName = (typeof FailureType)[keyof typeof FailureType];

/** Details attached to a job failure (ApplicationFailure.details[0]). */
export interface JobFailureDetails {
  jobId: string;
  reason: string;
  detail: string;
  lastCheckpointUri: string;
}
