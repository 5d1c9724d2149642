// Every kernel family's audit cases, in one list for `deno task audit` and the test suite.

import type { AuditCase } from "./audit.ts";
import { elementwiseAuditCases } from "./reference/elementwise.ts";
import { matmulAuditCases } from "./reference/matmul.ts";
import { attentionAuditCases } from "./reference/attention.ts";
import { attentionFlowAuditCases } from "./reference/attention_flow.ts";
import { normAuditCases } from "./reference/norm.ts";
import { ropeAuditCases } from "./reference/rope.ts";
import { rowsAuditCases } from "./reference/rows.ts";
import { embeddingAuditCases } from "./reference/embedding.ts";
import { patchAuditCases } from "./reference/patch.ts";
import { conv2dAuditCases } from "./reference/conv2d.ts";
import { groupNormAuditCases } from "./reference/groupnorm.ts";
import { upsampleAuditCases } from "./reference/upsample.ts";
import { latentAuditCases } from "./reference/latent.ts";
import { transposeAuditCases } from "./reference/transpose.ts";

export const AUDIT_FAMILIES: Record<string, AuditCase[]> = {
  elementwise: elementwiseAuditCases,
  matmul: matmulAuditCases,
  attention: attentionAuditCases,
  attention_flow: attentionFlowAuditCases,
  norm: normAuditCases,
  rope: ropeAuditCases,
  rows: rowsAuditCases,
  embedding: embeddingAuditCases,
  patch: patchAuditCases,
  conv2d: conv2dAuditCases,
  groupnorm: groupNormAuditCases,
  upsample: upsampleAuditCases,
  latent: latentAuditCases,
  transpose: transposeAuditCases,
};
