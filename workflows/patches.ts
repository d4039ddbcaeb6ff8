/**
 * Workflow changes that runs already in flight must not see: each is a `patched()` id. A run that started before
 * the change replays without the patch's marker and keeps the old code path to its end; a run started afterwards
 * takes the new one. README "Deploying new code" says which kind of change needs a patch. Remove a path (with
 * `deprecatePatch`) only once no run that started before it can still be open.
 */
export const Patches = {
  /**
   * 2026-12 (issue 14): the input is parsed once in a local activity whose result history records; progress lives
   * in heartbeat details, not signals; job ids and output folders belong to one run; cancel and pause stop the job
   * through a cleanup activity; a busy GPU is waited for, never a failure; continue-as-new also mid-stage.
   */
  recordedInput: 'vlmflow-2026-12-recorded-input',
  /**
   * 2026-12 (issue 16): DPO trains with the preference dataset's maxLength (the one its rows were prepared and
   * checked with), not the SFT dataset's.
   */
  dpoMaxLength: 'vlmflow-2026-12-dpo-max-length',
  /**
   * 2026-12 (issue 18): the Temporal UI tells the story: each stage's activity (and the history-check timer) carries
   * a summary naming it, and a config that fails to parse sets VlmflowStatus `invalid-config` before the run fails.
   */
  uiStory: 'vlmflow-2026-12-ui-story',
  /**
   * 2026-12 (issue 19): a config with a grpo section runs GRPO (and its own dataset prep) after SFT or DPO, and
   * evaluate compares base, SFT (DPO) and GRPO side by side; the GRPO adapter is the one gated and exported.
   */
  grpoStage: 'vlmflow-2026-12-grpo-stage',
} as const;
