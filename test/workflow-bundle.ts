/** The workflows bundled once for the whole test run (test/global-setup.ts). */
import type { WorkflowBundlePath } from '@temporalio/worker';
import { inject } from 'vitest';

/** The bundle file, for `vlmflow worker` (VLMFLOW_WORKFLOW_BUNDLE) and createTemporalWorkers. */
export const workflowBundlePath = (): string => inject('workflowBundlePath');

/** The same file as Worker.create's `workflowBundle` option. */
export const sharedWorkflowBundle = (): WorkflowBundlePath => ({ codePath: workflowBundlePath() });
