// Token groups of one run, resolved to sequence indices from the run's layout. The transformer's sequence is
// [text ; noise (image) ; reference 0 ; reference 1 ; …]; text positions are those of the templated prompt.
//
// Grammar (one group):  text | text[content] | text[scaffold] | text[pad] | text[padding] | text[i..j] |
//                       text[i,j,k] | text[chars:i..j] | image | ref | ref[k]
// `text[padding]` = scaffold ∪ pad (the chat template's tokens and the pad tokens), the paper's "padding".
// `text[i..j]` is half-open (i, i+1, …, j−1). Several groups are joined with `+`.
// `text[chars:i..j]`: the content tokens whose characters lie inside characters [i, j) of the user's prompt (UTF-16
// code units, half-open; i = j selects nothing). A token with characters on both sides of i or j belongs to neither
// side, so it is refused with its span rather than dropped: split points between words fall between tokens (the
// padding dose-response's filler starts with a space, which Qwen3's tokenizer keeps with the next word).

import type { RunLayout } from "../model/run.ts";

const range = (start: number, count: number) => Array.from({ length: count }, (_, i) => start + i);

/** Sequence indices of one group (sorted, unique). Throws with the group's text on anything unknown. */
export function resolveGroup(layout: RunLayout, group: string): number[] {
  const g = group.trim();
  const refStart = layout.textRows + layout.noiseRows;
  if (g === "text") return range(0, layout.textRows);
  if (g === "image") return range(layout.textRows, layout.noiseRows);
  if (g === "ref") {
    const total = layout.refRows.reduce((a, b) => a + b, 0);
    return range(refStart, total);
  }
  let m = /^ref\[(\d+)\]$/.exec(g);
  if (m) {
    const k = Number(m[1]);
    if (k >= layout.refRows.length) {
      throw new Error(`group "${group}": this run has ${layout.refRows.length} reference image(s), so ref[${k}] does not exist`);
    }
    const start = refStart + layout.refRows.slice(0, k).reduce((a, b) => a + b, 0);
    return range(start, layout.refRows[k]);
  }
  m = /^text\[(.+)\]$/.exec(g);
  if (m) {
    const inner = m[1].trim();
    if (inner === "content" || inner === "scaffold" || inner === "pad" || inner === "padding") return [...layout.prompt[inner]];
    const chars = /^chars:\s*(\d+)\s*\.\.\s*(\d+)$/.exec(inner);
    if (chars) return tokensOfCharacters(layout, group, Number(chars[1]), Number(chars[2]));
    const r = /^(\d+)\s*\.\.\s*(\d+)$/.exec(inner);
    let positions: number[];
    if (r) {
      const [i, j] = [Number(r[1]), Number(r[2])];
      if (j <= i) throw new Error(`group "${group}": empty range ${i}..${j}`);
      positions = range(i, j - i);
    } else if (/^\d+(\s*,\s*\d+)*$/.test(inner)) {
      positions = [...new Set(inner.split(",").map((s) => Number(s.trim())))].sort((a, b) => a - b);
    } else {
      throw new Error(`group "${group}": expected text[content|scaffold|pad|padding], text[i..j], text[i,j,…] or text[chars:i..j]`);
    }
    const bad = positions.find((p) => p >= layout.textRows);
    if (bad !== undefined) throw new Error(`group "${group}": text position ${bad} is outside 0..${layout.textRows - 1}`);
    return positions;
  }
  throw new Error(
    `unknown token group "${group}" (known: text, text[content], text[scaffold], text[pad], text[padding], ` +
      `text[i..j], text[i,j,…], text[chars:i..j], image, ref, ref[k])`,
  );
}

/** Content tokens inside characters [i, j) of the user's prompt (see the header). */
function tokensOfCharacters(layout: RunLayout, group: string, i: number, j: number): number[] {
  if (j < i) throw new Error(`group "${group}": character range ${i}..${j} ends before it starts`);
  const { content, contentSpans, promptLength } = layout.prompt;
  if (!content.length) return [];
  if (!contentSpans || promptLength === undefined) {
    throw new Error(`group "${group}": this run's prompt groups carry no character offsets`);
  }
  if (j > promptLength) throw new Error(`group "${group}": character ${j} is beyond the prompt's ${promptLength} characters`);
  const out: number[] = [];
  content.forEach((position, k) => {
    const [start, end] = contentSpans[k];
    if (start >= i && end <= j && end > start) out.push(position);
    else if (start < j && end > i) {
      throw new Error(
        `group "${group}": text position ${position} holds prompt characters ${start}..${end}, across the edge of ${i}..${j}; ` +
          `choose edges between tokens`,
      );
    }
  });
  return out;
}

/** Union of groups joined by `+`. */
export function resolveGroups(layout: RunLayout, groups: string): number[] {
  const all = new Set<number>();
  for (const part of groups.split("+")) for (const i of resolveGroup(layout, part)) all.add(i);
  return [...all].sort((a, b) => a - b);
}
