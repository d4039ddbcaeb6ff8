/** Every workflow the TS worker registers. Deterministic code only (no Node built-ins, no I/O). */
export { healthCheck } from './health-check.js';
export { fineTunePipeline } from './fine-tune-pipeline.js';
export { batchInference } from './batch-inference.js';
export { videoUnderstanding } from './video-understanding.js';
