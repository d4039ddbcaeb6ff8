/**
 * The files that take minutes (measured on a clean clone), started first. Without durations from an earlier run
 * (a clean clone, as CI has) vitest starts the largest files first, which put the 5-minute cluster file among the
 * last and left one of the two workers idle while it ran; with durations, the longest run first anyway.
 */
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const SLOW_FIRST = ['faults', 'long-runs', 'cluster', 'pipeline-e2e', 'cli', 'metrics'];

function rank(spec: TestSpecification): number {
  const index = SLOW_FIRST.findIndex((name) => spec.moduleId.endsWith(`/${name}.test.ts`));
  return index === -1 ? SLOW_FIRST.length : index;
}

export default class SlowFilesFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}
