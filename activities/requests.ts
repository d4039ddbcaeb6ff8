/** Config (zod-typed, from src/config/pipeline-config.ts) → the worker's protobuf requests. */
import { Dtype, ModelRef, Quantization } from '../src/gen/vlmflow/v1/common.js';
import { DatasetLayout, type DatasetSource } from '../src/gen/vlmflow/v1/jobs.js';
import { GenerationConfig } from '../src/gen/vlmflow/v1/common.js';
import type {
  DatasetConfig,
  GenerationConfig as GenerationSettings,
  LoraConfig,
  ModelConfig,
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

export function generationRequest(generation: GenerationSettings): GenerationConfig {
  return GenerationConfig.fromPartial(generation);
}
