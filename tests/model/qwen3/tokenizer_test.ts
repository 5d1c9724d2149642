// Qwen3 tokenizer, chat template and prompt token groups against the reference's text_encoder cases.

import assert from "node:assert/strict";
import { encodePrompt, QWEN3_PROMPT_LENGTH } from "../../../model/qwen3/prompt.ts";
import { loadChatTemplate } from "../../../model/qwen3/template.ts";
import { loadQwen3Tokenizer } from "../../../model/qwen3/tokenizer.ts";

const FIXTURES = new URL("../../fixtures/klein-tiny/", import.meta.url).pathname;
const TOKENIZER_DIR = `${FIXTURES}model/tokenizer`;

interface TextEncoderCase {
  name: string;
  kind: string;
  file: string;
  prompt: string;
  templated: string;
  content_positions: number[] | null;
  real_tokens: number;
}

const allCases = JSON.parse(Deno.readTextFileSync(`${FIXTURES}cases.json`));
const textCases: TextEncoderCase[] = (Array.isArray(allCases) ? allCases : allCases.cases).filter((c: TextEncoderCase) =>
  c.kind === "text_encoder"
);

/** An I64 tensor of a safetensors file, as numbers (token ids and masks fit exactly). */
function readI64(path: string, name: string): number[] {
  const bytes = Deno.readFileSync(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const entry = header[name];
  assert.ok(entry, `${path} has no tensor ${name}`);
  assert.equal(entry.dtype, "I64");
  const [begin, end] = entry.data_offsets;
  const out: number[] = [];
  for (let at = 8 + headerLength + begin; at < 8 + headerLength + end; at += 8) out.push(Number(view.getBigInt64(at, true)));
  return out;
}

const tokenizer = await loadQwen3Tokenizer(TOKENIZER_DIR);
const template = await loadChatTemplate(TOKENIZER_DIR);
const IM_START = tokenizer.tokenToId("<|im_start|>")!;
const IM_END = tokenizer.tokenToId("<|im_end|>")!;

Deno.test("reference text_encoder cases exist", () => {
  assert.ok(textCases.length >= 4, `expected the four text_encoder cases, found ${textCases.length}`);
  assert.ok(textCases.some((c) => c.content_positions === null), "a case without reference content positions (Unicode prompt)");
});

for (const c of textCases) {
  Deno.test(`${c.name}: ids, mask, template and content positions equal the reference`, () => {
    const encoded = encodePrompt(tokenizer, template, c.prompt);
    assert.equal(encoded.templated, c.templated);
    assert.deepEqual(Array.from(encoded.inputIds), readI64(`${FIXTURES}${c.file}`, "input_ids"));
    assert.deepEqual(Array.from(encoded.attentionMask), readI64(`${FIXTURES}${c.file}`, "attention_mask"));
    assert.equal(encoded.realTokens, c.real_tokens);
    assert.equal(encoded.truncated, false);
    assert.equal(encoded.warning, null);
    assert.equal(encoded.inputIds.length, QWEN3_PROMPT_LENGTH);

    const { content, scaffold, pad, padding } = encoded.groups;
    if (c.content_positions !== null) assert.deepEqual(content, c.content_positions);
    // The content tokens decode back to exactly the prompt: this is the check for the Unicode case, where the
    // reference's per-token decode could not locate the prompt.
    assert.equal(tokenizer.decode(content.map((i) => encoded.inputIds[i])), c.prompt);
    for (let i = 1; i < content.length; i++) assert.equal(content[i], content[i - 1] + 1, "content is one contiguous run");

    assert.deepEqual([...content, ...scaffold].sort((a, b) => a - b), range(0, c.real_tokens));
    assert.deepEqual(pad, range(c.real_tokens, QWEN3_PROMPT_LENGTH));
    assert.deepEqual(padding, [...scaffold, ...pad].sort((a, b) => a - b));
    assert.deepEqual(padding, range(0, QWEN3_PROMPT_LENGTH).filter((i) => !content.includes(i)));
  });
}

Deno.test("text_3 (Unicode): content span in characters is exactly the prompt", () => {
  const c = textCases.find((c) => c.content_positions === null)!;
  const encoded = encodePrompt(tokenizer, template, c.prompt);
  const { content } = encoded.groups;
  assert.ok(content.length > 0);
  const first = encoded.offsets[content[0]];
  const last = encoded.offsets[content[content.length - 1]];
  assert.equal(encoded.templated.slice(first[0], last[1]), c.prompt);
  assert.deepEqual(encoded.promptSpan, [first[0], last[1]]);
  // "☕" is split over two byte-level tokens; both cover the whole character.
  const coffee = encoded.templated.indexOf("☕");
  const holders = content.filter((i) => encoded.offsets[i][0] <= coffee && encoded.offsets[i][1] > coffee);
  assert.equal(holders.length, 2);
});

Deno.test("token offsets: each token of an NFC text spells its own characters", () => {
  for (const c of textCases) {
    const encoded = tokenizer.encode(c.templated);
    assert.equal(encoded.offsets.length, encoded.ids.length);
    let cursor = 0;
    for (let i = 0; i < encoded.ids.length; i++) {
      const [start, end] = encoded.offsets[i];
      assert.ok(start <= cursor && end > start, `${c.name} token ${i} offsets [${start}, ${end}) at cursor ${cursor}`);
      cursor = end;
      const piece = tokenizer.decode([encoded.ids[i]]);
      if (!piece.includes("\uFFFD")) assert.equal(c.templated.slice(start, end), piece, `${c.name} token ${i}`);
    }
    assert.equal(cursor, c.templated.length);
  }
});

Deno.test("a prompt over 512 tokens is cut to the first 512 with a warning", () => {
  const prompt = Array.from({ length: 700 }, (_, i) => `word${i % 10}`).join(" ");
  const full = tokenizer.encode(template.renderUserPrompt(prompt).templated).ids;
  assert.ok(full.length > QWEN3_PROMPT_LENGTH);
  const encoded = encodePrompt(tokenizer, template, prompt);
  assert.equal(encoded.truncated, true);
  assert.equal(encoded.realTokens, QWEN3_PROMPT_LENGTH);
  assert.equal(encoded.inputIds.length, QWEN3_PROMPT_LENGTH);
  assert.deepEqual(Array.from(encoded.inputIds), full.slice(0, QWEN3_PROMPT_LENGTH));
  assert.ok(encoded.attentionMask.every((m) => m === 1));
  assert.match(encoded.warning ?? "", /truncated.*\d+ tokens.*512/);
  assert.deepEqual(encoded.groups.scaffold, [0, 1, 2]);
  assert.deepEqual(encoded.groups.content, range(3, QWEN3_PROMPT_LENGTH));
  assert.deepEqual(encoded.groups.pad, []);
  assert.deepEqual(encoded.groups.padding, [0, 1, 2]);

  const short = encodePrompt(tokenizer, template, "a red bench", { maxLength: 8 });
  assert.equal(short.truncated, true);
  assert.equal(short.inputIds.length, 8);
  assert.deepEqual(short.groups.content, [3, 4, 5]);
  assert.deepEqual(short.groups.scaffold, [0, 1, 2, 6, 7]);
});

Deno.test("the empty prompt has no content tokens", () => {
  const encoded = encodePrompt(tokenizer, template, "");
  assert.deepEqual(encoded.groups.content, []);
  assert.equal(encoded.realTokens, 12);
  assert.deepEqual(encoded.groups.scaffold, range(0, 12));
  assert.deepEqual(encoded.groups.padding, range(0, QWEN3_PROMPT_LENGTH));
  assert.deepEqual(encoded.promptSpan, [17, 17]);
});

Deno.test("special-token strings typed in the prompt become those tokens and count as content", () => {
  const prompt = "a cat<|im_end|>\n<|im_start|>system <think>x</think>";
  const encoded = encodePrompt(tokenizer, template, prompt);
  const ids = encoded.groups.content.map((i) => encoded.inputIds[i]);
  // Matched as added tokens anywhere in the text, as the reference tokenizer does by default.
  assert.deepEqual(
    ids,
    [
      ...tokenizer.encode("a cat").ids,
      IM_END,
      ...tokenizer.encode("\n").ids,
      IM_START,
      ...tokenizer.encode("system ").ids,
      tokenizer.tokenToId("<think>")!,
      ...tokenizer.encode("x").ids,
      tokenizer.tokenToId("</think>")!,
    ],
  );
  assert.equal(tokenizer.decode(ids), prompt);
  assert.deepEqual(encoded.groups.scaffold, [0, 1, 2, ...range(3 + ids.length, encoded.realTokens)]);
  // The template's own closing <|im_end|> directly after the prompt is scaffold.
  assert.equal(encoded.inputIds[3 + ids.length], IM_END);
});

Deno.test("a token straddling the prompt's edge is content", () => {
  // "user\n" + "\n\nhello": the pre-tokenizer keeps the three line breaks as one token, partly the template's.
  const encoded = encodePrompt(tokenizer, template, "\n\nhello");
  const straddling = encoded.groups.content[0];
  assert.equal(straddling, 2);
  assert.equal(tokenizer.decode([encoded.inputIds[straddling]]), "\n\n\n");
  assert.deepEqual(encoded.groups.scaffold.slice(0, 2), [0, 1]);
});

Deno.test("a prompt not in NFC is tokenised normalised; offsets point into the original characters", () => {
  const decomposed = "cafe\u0301 \u1100\u1161 ok";
  const encoded = encodePrompt(tokenizer, template, decomposed);
  const nfc = encodePrompt(tokenizer, template, decomposed.normalize("NFC"));
  assert.deepEqual(Array.from(encoded.inputIds), Array.from(nfc.inputIds));
  assert.deepEqual(encoded.groups.content, nfc.groups.content);
  const { content } = encoded.groups;
  assert.deepEqual([encoded.offsets[content[0]][0], encoded.offsets[content[content.length - 1]][1]], encoded.promptSpan);
  assert.equal(tokenizer.decode(content.map((i) => encoded.inputIds[i])), decomposed.normalize("NFC"));

  // Reordered marks (dot below before dot above) form one cluster; the emoji after it keeps its own span.
  const text = "a\u0307\u0323b \u{1F600}";
  const { ids, offsets } = tokenizer.encode(text);
  assert.deepEqual(ids, tokenizer.encode(text.normalize("NFC")).ids);
  const spans = offsets.map(([start, end]) => text.slice(start, end));
  assert.ok(spans.includes("a\u0307\u0323"));
  assert.ok(spans.every((s) => s === "a\u0307\u0323" || s === "b" || s === " \u{1F600}" || s === "\u{1F600}"), JSON.stringify(spans));
});

Deno.test("a lone surrogate in the prompt is refused with its position", () => {
  assert.throws(() => encodePrompt(tokenizer, template, "ab\uD83Dc"), /lone UTF-16 surrogate U\+D83D at index 2/);
  assert.throws(() => encodePrompt(tokenizer, template, "\uDE00"), /lone UTF-16 surrogate U\+DE00 at index 0/);
  assert.throws(() => tokenizer.encode("x\uD800"), /lone UTF-16 surrogate U\+D800 at index 1/);
  // A proper pair is fine.
  const emoji = encodePrompt(tokenizer, template, "\u{1F600}");
  assert.equal(tokenizer.decode(emoji.groups.content.map((i) => emoji.inputIds[i])), "\u{1F600}");
});

Deno.test("tokenizer and template load once per folder", async () => {
  assert.equal(await loadQwen3Tokenizer(`${TOKENIZER_DIR}/`), tokenizer);
  assert.equal(await loadChatTemplate(`${TOKENIZER_DIR}/../tokenizer`), template);
  assert.equal(tokenizer.padToken, "<|endoftext|>");
  assert.equal(tokenizer.padTokenId, 151643);
  await assert.rejects(loadQwen3Tokenizer(`${FIXTURES}no-such-folder`), /cannot read .*tokenizer/);
});

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}
