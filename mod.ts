// kleinscope's public API, for embedding in your own Deno tools:
//
//   import { Flux2KleinPipeline, KnockoutIntervention, CaptureIntervention } from "./mod.ts";
//   const pipe = await Flux2KleinPipeline.load("models/klein-4b");
//   const ko = new KnockoutIntervention([{ setting: "ref->text[padding]", blocks: "all" }]);
//   const cap = new CaptureIntervention([{ tap: "double.2.txt", group: "text[content]" }]);
//   const run = await pipe.generate({ prompt: "draw a couch in this color", refs: ["swatch.png"], interventions: [ko, cap] });
//   await savePng("out.png", run.image, run.width, run.height);
//   const rows = cap.results(run).at("double.2.txt", "text[content]", 0); // { rows, cols, data }

// Pipeline and components
export {
  checkSequenceLength,
  checkSize,
  Flux2KleinPipeline,
  MAX_OUTPUT_SIDE,
  MAX_SEQUENCE_LENGTH,
  NOISE_SOURCES,
  type NoiseSource,
} from "./model/pipeline.ts";
export { torchCpuNoise } from "./model/torch_random.ts";
export type { GenerateRequest, GenerateResult, PipelineOptions, PreparedRun, ReferenceImage, StepInfo } from "./model/pipeline.ts";
export { Flux2Transformer } from "./model/flux2/transformer.ts";
export { blockNames, type Flux2Config, parseFlux2Config } from "./model/flux2/config.ts";
export { Qwen3TextEncoder } from "./model/qwen3/text_encoder.ts";
export { type EncodedPrompt, encodePrompt } from "./model/qwen3/prompt.ts";
export { loadQwen3Tokenizer } from "./model/qwen3/tokenizer.ts";
export { loadChatTemplate } from "./model/qwen3/template.ts";
export { Vae } from "./model/vae/vae.ts";
export { loadImage, preprocessReference, savePng, toUnitRange } from "./model/images.ts";
export { empiricalMu, flowSchedule, packLatents, seededNoise, unpackLatents } from "./model/sampler.ts";

// Interventions and experiment specs
export type {
  AttentionCut,
  ForwardSite,
  Intervention,
  InterventionOutputs,
  RunBinding,
  RunContext,
  RunLayout,
  TapInfo,
} from "./model/run.ts";
export { resolveGroup, resolveGroups } from "./interventions/groups.ts";
export { resolveBlocks, resolveSteps } from "./interventions/intervention.ts";
export { KnockoutIntervention, type KnockoutSetting } from "./interventions/knockout.ts";
export { PatchIntervention, type PatchSpec, type RowSupply } from "./interventions/patch.ts";
export {
  type CapturedRows,
  type CapturedTensor,
  CaptureIntervention,
  type CaptureOptions,
  type CaptureRequest,
  CaptureSet,
  type CaptureStats,
  DEFAULT_CAPTURE_BUDGET_MB,
} from "./interventions/capture_run.ts";
export {
  AttentionFlowIntervention,
  type AttentionFlowRequest,
  AttentionFlowResult,
  type AttentionFlowTable,
  defaultFlowGroups,
} from "./interventions/attention_flow.ts";

// Studies: specs, several runs tied together, outputs
export { parseSpec, readSpec, type RunSpec, SPEC_VERSION } from "./studies/spec.ts";
export {
  checkSpec,
  executePlan,
  executeSpec,
  KLEINSCOPE_VERSION,
  type PlanOptions,
  planSpec,
  type SpecPlan,
  type SpecRunResult,
} from "./studies/execute.ts";
export { SourceRows, type SourceRowsRequest } from "./studies/source_rows.ts";
export { CONTROL_RULE, controlKnockouts, type EffectsResult, type RunEffects } from "./studies/effects.ts";
export { resolvedSpec, writeSpecOutputs } from "./studies/outputs.ts";

// Runtime, kernels and weights (for auditing and for building your own graphs)
export { describeAdapter, type DeviceCapabilities, getGpu, type GpuContext, openGpu } from "./runtime/device.ts";
export { Graph, type GraphNode } from "./runtime/graph.ts";
export { Plan, type WeightSource } from "./runtime/executor.ts";
export type { KernelSpec } from "./runtime/kernel.ts";
export { Rng } from "./runtime/random.ts";
export { type AuditCase, formatAuditTable, runAuditCase } from "./kernels/audit.ts";
export { AUDIT_FAMILIES } from "./kernels/catalog.ts";
export { applyDeviceTuning } from "./kernels/tuning.ts";
export { SafetensorsFile } from "./weights/safetensors.ts";
export { writeSafetensors } from "./weights/safetensors_writer.ts";
export { Checkpoint } from "./weights/checkpoint.ts";
export { WeightStore } from "./weights/store.ts";
export { checkpointFingerprint } from "./weights/fingerprint.ts";

// Conformance against reference data
export { runConformance } from "./conformance/runner.ts";
export { conformanceKinds } from "./conformance/kinds.ts";
