// Deviations of the reference generator that the conformance replay must reproduce to compare like with like.
//
// Single-block RoPE under knockout. The golden knockout cases (make_goldens.py, `MaskedProc`) wrap every block's
// attention processor. diffusers' Flux2ParallelSelfAttention.forward calls its processor positionally as
// (attn, hidden_states, attention_mask, image_rotary_emb), but MaskedProc's signature is
// (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb): the rotary embedding lands in its
// `attention_mask` slot and the single-block processor is then called with image_rotary_emb=None. So in those cases,
// and only there, the reference's single blocks attend WITHOUT RoPE. Double blocks are called with all five
// arguments and are unaffected. kleinscope's own knockout keeps RoPE everywhere (the model's real semantics); this
// rewrite exists only so that the knockout cases can be replayed exactly and their masks verified.

import type { Graph } from "../runtime/graph.ts";
import type { Intervention, RunContext } from "../interventions/intervention.ts";

export class SingleBlockRopeOmission implements Intervention {
  readonly label = "reference quirk: single blocks attend without RoPE (make_goldens.py MaskedProc)";

  validate(_ctx: RunContext): void {}

  rewrite(g: Graph, ctx: RunContext): void {
    ctx.blocks.forEach((block, i) => {
      if (!block.startsWith("single.")) return;
      const node = g.nodes.find((n) => n.name === ctx.attention[i].node);
      if (!node) throw new Error(`${this.label}: no attention node for ${block}`);
      for (const part of ["q", "k"] as const) {
        const ropeNode = g.nodes.find((n) => n.name === `${block}.${part}_rope`);
        if (!ropeNode) throw new Error(`${this.label}: no RoPE node ${block}.${part}_rope`);
        node.bindings = { ...node.bindings, [part]: ropeNode.bindings.x };
      }
    });
  }
}
