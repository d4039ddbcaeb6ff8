/** Default task queues: workflows on one, GPU activities (one per Python worker host) on the other. */
export const WORKFLOW_TASK_QUEUE = 'vlmflow';
export const GPU_TASK_QUEUE = 'vlmflow-gpu';
