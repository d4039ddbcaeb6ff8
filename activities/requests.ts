/**
 * Stage inputs (config sections, zod-typed in src/config/pipeline-config.ts) → the worker's protobuf requests.
 * Every scalar is sent, zeros included: the worker takes a set `optional` field as written (dropout 0 is 0).
 */
import { Dtype, ModelRef, Quantization } from '../src/gen/vlmflow/v1/common.js';
import { GenerationConfig } from '../src/gen/vlmflow/v1/common.js';
import {
  DatasetLayout,
  EvaluateRequest,
  ExportRequest,
  PrepareDatasetRequest,
  GrpoConfig as GrpoRequest,
  TrainKind,
  TrackingConfig as TrackingMessage,
  TrainRequest,
  type DatasetSource,
} from '../src/gen/vlmflow/v1/jobs.js';
import type { EvaluateInput, ExportInput, GrpoSettings, PrepareDatasetInput, TrainInput } from './stages.js';
import type {
  DatasetConfig,
  GenerationConfig as GenerationSettings,
  LoraConfig,
  ModelConfig,
  TrackingConfig,
  TrainingConfig,
} from '../src/config/pipeline-config.js';

const QUANTIZATION: Record<ModelConfig['quantization'], Quantization> = {
  none: Quantization.QUANTIZATION_NONE,
  nf4: Quantization.QUANTIZATION_NF4,
  int8: Quantization.QUANTIZATION_INT8,
};

const DTYPE: Record<ModelConfig['dtype'], Dtype> = {
  auto: Dtype.DTYPE_UNSPECIFIED,
  float32: Dtype.DTYPE_FLOAT32,
  bfloat16: Dtype.DTYPE_BFLOAT16,
  float16: Dtype.DTYPE_FLOAT16,
};

const LAYOUT: Record<DatasetConfig['sources'][number]['layout'], DatasetLayout> = {
  auto: DatasetLayout.DATASET_LAYOUT_AUTO,
  messages: DatasetLayout.DATASET_LAYOUT_MESSAGES,
  sharegpt: DatasetLayout.DATASET_LAYOUT_SHAREGPT,
  vqa: DatasetLayout.DATASET_LAYOUT_VQA,
  preference: DatasetLayout.DATASET_LAYOUT_PREFERENCE,
  image_folder: DatasetLayout.DATASET_LAYOUT_IMAGE_FOLDER,
};

export function modelRef(model: ModelConfig, adapterUri = ''): ModelRef {
  return ModelRef.fromPartial({
    modelId: model.id,
    revision: model.revision,
    quantization: QUANTIZATION[model.quantization],
    adapterUri,
    trustRemoteCode: model.trustRemoteCode,
    dtype: DTYPE[model.dtype],
  });
}

export function datasetSources(dataset: DatasetConfig): DatasetSource[] {
  return dataset.sources.map((s) => ({
    uri: s.uri,
    layout: LAYOUT[s.layout],
    split: s.split,
    subset: s.subset,
    columns: s.columns,
  }));
}

export function loraRequest(lora: LoraConfig) {
  return { ...lora };
}

export function trainingRequest(training: TrainingConfig, maxLength: number) {
  const { retryOnOutOfMemory: _ignored, ...rest } = training;
  return { ...rest, maxLength };
}

const TRAIN_KIND: Record<TrainInput['kind'], TrainKind> = {
  sft: TrainKind.TRAIN_KIND_SFT,
  dpo: TrainKind.TRAIN_KIND_DPO,
  grpo: TrainKind.TRAIN_KIND_GRPO,
};

/** The grpo section's generation, loss and rewards; epsilonHigh only when set (unset = epsilon). */
export function grpoRequest(grpo: GrpoSettings): GrpoRequest {
  return GrpoRequest.fromPartial({ ...grpo, rewards: grpo.rewards.map((reward) => ({ ...reward })) });
}

export function generationRequest(generation: GenerationSettings): GenerationConfig {
  return GenerationConfig.fromPartial(generation);
}

/**
 * The config's tracking section for one stage's job. `runKey` (the run's watcher: workflow id and first run id)
 * names the pipeline run's one MLflow run, which every stage and every retry finds again.
 */
export function trackingRequest(
  tracking: TrackingConfig | undefined,
  input: { stage: string; watcher?: string; jobId: string },
): TrackingMessage {
  return TrackingMessage.fromPartial({
    runKey: input.watcher || input.jobId,
    stage: input.stage,
    mlflow: tracking?.mlflow,
    wandb: tracking?.wandb,
  });
}

export function prepareDatasetRequest(input: PrepareDatasetInput): PrepareDatasetRequest {
  return PrepareDatasetRequest.fromPartial({
    jobId: input.jobId,
    sources: datasetSources(input.dataset),
    model: modelRef(input.model),
    maxLength: input.dataset.maxLength,
    evalFraction: input.dataset.evalFraction,
    seed: input.dataset.seed,
    maxDropFraction: input.dataset.maxDropFraction,
    maxRows: input.dataset.maxRows,
    outputUri: input.outputUri,
    watcher: input.watcher ?? '',
  });
}

export function trainRequest(input: TrainInput): TrainRequest {
  return TrainRequest.fromPartial({
    jobId: input.jobId,
    kind: TRAIN_KIND[input.kind],
    model: modelRef(input.model, input.adapterUri),
    datasetUri: input.datasetUri,
    outputUri: input.outputUri,
    lora: loraRequest(input.lora),
    training: trainingRequest(input.training, input.maxLength),
    dpo: input.dpo,
    grpo: input.grpo ? grpoRequest(input.grpo) : undefined,
    resumeFromCheckpointUri: input.resumeFromCheckpoint,
    watcher: input.watcher ?? '',
    tracking: trackingRequest(input.tracking, input),
  });
}

export function evaluateRequest(input: EvaluateInput): EvaluateRequest {
  return EvaluateRequest.fromPartial({
    jobId: input.jobId,
    model: modelRef(input.model),
    variants: input.variants,
    datasetUri: input.datasetUri,
    metrics: input.evaluate.metrics,
    generation: generationRequest(input.evaluate.generation),
    batchSize: input.evaluate.batchSize,
    maxSamples: input.evaluate.maxSamples,
    bootstrapSamples: input.evaluate.bootstrapSamples,
    outputUri: input.outputUri,
    watcher: input.watcher ?? '',
    tracking: trackingRequest(input.tracking, input),
  });
}

export function exportRequest(input: ExportInput): ExportRequest {
  return ExportRequest.fromPartial({
    jobId: input.jobId,
    model: modelRef(input.model, input.adapterUri),
    outputUri: input.outputUri,
    pushToHub: input.pushToHub,
    privateRepo: input.privateRepo,
    card: input.card,
    watcher: input.watcher ?? '',
    tracking: trackingRequest(input.tracking, input),
  });
}
