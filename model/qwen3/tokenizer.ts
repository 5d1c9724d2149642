// Qwen3 tokenizer: byte-level BPE from a checkpoint's tokenizer/ folder, with character offsets per token.
//
// Token ids come from @huggingface/tokenizers (a port of the reference `tokenizers` crate that reproduces its ids
// on the reference cases). That package reports no offsets, so they are recovered here by aligning the tokens'
// bytes with the text: the text is split on added tokens exactly as the reference does (leftmost-longest match of
// every added token's literal content, before normalisation), each remaining section is NFC-normalised, and the
// UTF-8 bytes of the normalised sections must be the concatenation of the byte-level tokens. Any disagreement
// throws, so offsets are never guessed.

import { resolve } from "node:path";
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";

/** [start, end) in UTF-16 code units of the encoded string. */
export type CharSpan = [start: number, end: number];

export interface TokenizerEncoding {
  ids: number[];
  /** Per token: the span of the original characters its bytes come from. A token holding only some bytes of a
   * character (byte-level BPE splits rare characters) covers that whole character; where NFC changes the text,
   * a token covers whole grapheme clusters of the original text (see `normalisationChunks`). */
  offsets: CharSpan[];
}

interface AddedTokenJson {
  id: number;
  content: string;
  special: boolean;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
  single_word: boolean;
}

interface TokenizerJson {
  added_tokens: AddedTokenJson[];
  normalizer: { type: string } | null;
  pre_tokenizer: { type: string; pretokenizers?: { type: string }[] } | null;
  model: { type: string };
}

/** A section of the text: an added token, or text that goes through normalisation and BPE. */
interface Section {
  start: number;
  end: number;
  addedTokenId: number | null;
}

/** Unit of alignment between an original text section and its normalised UTF-8 bytes. */
interface NormalisedSection {
  bytes: Uint8Array;
  /** Per chunk: end (exclusive) of its bytes in `bytes`, and its original span. */
  chunkByteEnd: number[];
  chunkStart: number[];
  chunkEnd: number[];
}

const BYTE_LEVEL_CHAR_TO_BYTE = byteLevelDecodingTable();

/** GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted to U+0100 onward. */
function byteLevelDecodingTable(): Map<string, number> {
  const table = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table.set(String.fromCharCode(printable ? b : 256 + shifted++), b);
  }
  return table;
}

/** Index of the first lone UTF-16 surrogate in `text`, or -1 when the text is well formed. */
export function findLoneSurrogate(text: string): number {
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (next >= 0xdc00 && next <= 0xdfff) i++;
      else return i;
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      return i;
    }
  }
  return -1;
}

function utf8Length(codePoint: number): number {
  return codePoint < 0x80 ? 1 : codePoint < 0x800 ? 2 : codePoint < 0x10000 ? 3 : 4;
}

export class Qwen3Tokenizer {
  /** Token id of each added token's content (special or not), matched in the text before BPE. */
  private readonly addedTokenIds = new Map<string, number>();
  private readonly addedTokensByFirstChar = new Map<string, string[]>();
  private readonly addedTokenIdSet = new Set<number>();
  private readonly normaliseNfc: boolean;
  private readonly graphemes = new Intl.Segmenter("und", { granularity: "grapheme" });
  private readonly utf8 = new TextEncoder();
  /** The token appended on the right to pad a sequence (tokenizer_config.json `pad_token`). */
  readonly padToken: string;
  readonly padTokenId: number;

  private constructor(
    private readonly hf: HfTokenizer,
    tokenizerJson: TokenizerJson,
    /** tokenizer_config.json as loaded. */
    readonly config: Record<string, unknown>,
    /** Where the files came from, for error messages. */
    readonly source: string,
  ) {
    checkSupported(tokenizerJson, source);
    this.normaliseNfc = tokenizerJson.normalizer?.type === "NFC";
    for (const token of tokenizerJson.added_tokens) {
      this.addedTokenIds.set(token.content, token.id);
      this.addedTokenIdSet.add(token.id);
      const first = token.content[0];
      const list = this.addedTokensByFirstChar.get(first) ?? [];
      list.push(token.content);
      list.sort((a, b) => b.length - a.length);
      this.addedTokensByFirstChar.set(first, list);
    }
    const pad = tokenContent(config.pad_token);
    if (pad === null) throw new Error(`tokenizer ${source}: tokenizer_config.json has no pad_token`);
    const padId = this.tokenToId(pad);
    if (padId === undefined) throw new Error(`tokenizer ${source}: pad_token ${JSON.stringify(pad)} is not in the vocabulary`);
    this.padToken = pad;
    this.padTokenId = padId;
  }

  /** Builds a tokenizer from the parsed tokenizer.json and tokenizer_config.json. */
  static fromJson(tokenizerJson: unknown, config: unknown, source = "(in memory)"): Qwen3Tokenizer {
    if (typeof tokenizerJson !== "object" || tokenizerJson === null) {
      throw new Error(`tokenizer ${source}: tokenizer.json is not an object`);
    }
    if (typeof config !== "object" || config === null) throw new Error(`tokenizer ${source}: tokenizer_config.json is not an object`);
    const hf = new HfTokenizer(tokenizerJson as object, config as object);
    return new Qwen3Tokenizer(hf, tokenizerJson as TokenizerJson, config as Record<string, unknown>, source);
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  isAddedToken(id: number): boolean {
    return this.addedTokenIdSet.has(id);
  }

  /** Token ids of `text` as the reference `tokenizer(text)` gives them (added tokens in the text, special ones
   * included, are matched as tokens), with the character span of each token. Throws on lone surrogates. */
  encode(text: string): TokenizerEncoding {
    const bad = findLoneSurrogate(text);
    if (bad >= 0) {
      throw new Error(
        `tokenizer ${this.source}: text has a lone UTF-16 surrogate U+${text.charCodeAt(bad).toString(16).toUpperCase()} at index ${bad}`,
      );
    }
    const ids = this.hf.encode(text, { add_special_tokens: true }).ids;
    return { ids, offsets: this.alignOffsets(text, ids) };
  }

  /** Text of the tokens, bytes joined then read as UTF-8 (invalid sequences become U+FFFD, as the reference). */
  decode(ids: readonly number[]): string {
    if (ids.length === 0) return "";
    return this.hf.decode([...ids], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** Splits the text on added tokens: leftmost match, longest first, as the reference's added-token matcher. */
  private splitOnAddedTokens(text: string): Section[] {
    const sections: Section[] = [];
    let textStart = 0;
    let i = 0;
    while (i < text.length) {
      const match = this.addedTokensByFirstChar.get(text[i])?.find((content) => text.startsWith(content, i));
      if (match === undefined) {
        i++;
        continue;
      }
      if (i > textStart) sections.push({ start: textStart, end: i, addedTokenId: null });
      sections.push({ start: i, end: i + match.length, addedTokenId: this.addedTokenIds.get(match)! });
      i += match.length;
      textStart = i;
    }
    if (text.length > textStart) sections.push({ start: textStart, end: text.length, addedTokenId: null });
    return sections;
  }

  /** The normalised bytes of a text section, in chunks that each map back to a span of the original. */
  private normaliseSection(text: string, start: number, end: number): NormalisedSection {
    const original = text.slice(start, end);
    const normalised = this.normaliseNfc ? original.normalize("NFC") : original;
    const chunkByteEnd: number[] = [];
    const chunkStart: number[] = [];
    const chunkEnd: number[] = [];
    let bytes = 0;
    const push = (from: number, to: number, byteLength: number) => {
      bytes += byteLength;
      chunkByteEnd.push(bytes);
      chunkStart.push(start + from);
      chunkEnd.push(start + to);
    };
    if (normalised === original) {
      // Normalisation changed nothing: every code point maps to itself.
      pushCodePoints(original, 0, original.length, push);
    } else {
      for (const chunk of normalisationChunks(original, normalised, this.graphemes)) {
        // A cluster normalisation leaves alone still maps code point by code point.
        if (chunk.normalised === original.slice(chunk.start, chunk.end)) pushCodePoints(original, chunk.start, chunk.end, push);
        else push(chunk.start, chunk.end, this.utf8.encode(chunk.normalised).length);
      }
    }
    return { bytes: this.utf8.encode(normalised), chunkByteEnd, chunkStart, chunkEnd };
  }

  private alignOffsets(text: string, ids: readonly number[]): CharSpan[] {
    const sections = this.splitOnAddedTokens(text);
    const offsets: CharSpan[] = [];
    let sectionIndex = 0;
    let current: NormalisedSection | null = null;
    let byteCursor = 0;
    let chunk = 0;
    const mismatch = (tokenIndex: number, why: string) =>
      new Error(`tokenizer ${this.source}: cannot align token ${tokenIndex} (id ${ids[tokenIndex]}) with the text: ${why}`);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t];
      const section = sections[sectionIndex];
      if (section === undefined) throw mismatch(t, "tokens remain after the end of the text");
      if (section.addedTokenId !== null) {
        if (section.addedTokenId !== id) throw mismatch(t, `expected added token ${section.addedTokenId} at index ${section.start}`);
        offsets.push([section.start, section.end]);
        sectionIndex++;
        continue;
      }
      if (this.addedTokenIdSet.has(id)) throw mismatch(t, `added token inside text at index ${section.start}`);
      current ??= this.normaliseSection(text, section.start, section.end);
      const tokenBytes = this.byteLevelBytes(id);
      const from = byteCursor;
      const to = from + tokenBytes.length;
      if (to > current.bytes.length) throw mismatch(t, "token runs past the end of its text section");
      for (let k = 0; k < tokenBytes.length; k++) {
        if (current.bytes[from + k] !== tokenBytes[k]) {
          throw mismatch(t, `bytes differ from the normalised text near index ${section.start}`);
        }
      }
      while (current.chunkByteEnd[chunk] <= from) chunk++;
      const firstChunk = chunk;
      while (current.chunkByteEnd[chunk] < to) chunk++;
      offsets.push([current.chunkStart[firstChunk], current.chunkEnd[chunk]]);
      byteCursor = to;
      if (byteCursor === current.bytes.length) {
        sectionIndex++;
        current = null;
        byteCursor = 0;
        chunk = 0;
      }
    }
    if (sectionIndex !== sections.length) {
      throw new Error(`tokenizer ${this.source}: tokens end before the text does (section at index ${sections[sectionIndex].start})`);
    }
    return offsets;
  }

  private byteLevelBytes(id: number): Uint8Array {
    const token = this.hf.id_to_token(id);
    if (token === undefined) throw new Error(`tokenizer ${this.source}: token id ${id} is not in the vocabulary`);
    const bytes = new Uint8Array(token.length);
    for (let i = 0; i < token.length; i++) {
      const b = BYTE_LEVEL_CHAR_TO_BYTE.get(token[i]);
      if (b === undefined) throw new Error(`tokenizer ${this.source}: token ${JSON.stringify(token)} (id ${id}) is not byte-level`);
      bytes[i] = b;
    }
    return bytes;
  }
}

function pushCodePoints(text: string, from: number, to: number, push: (from: number, to: number, byteLength: number) => void): void {
  for (let i = from; i < to;) {
    const codePoint = text.codePointAt(i)!;
    const units = codePoint > 0xffff ? 2 : 1;
    push(i, i + units, utf8Length(codePoint));
    i += units;
  }
}

/** Splits a section whose NFC form differs from it into grapheme clusters, which is exact when normalising each
 * cluster alone gives the same text as normalising the whole (composition and reordering stay inside clusters
 * in practice). Otherwise the whole section is one chunk: offsets then span the section, coarse but never wrong. */
function normalisationChunks(
  original: string,
  normalised: string,
  graphemes: Intl.Segmenter,
): { start: number; end: number; normalised: string }[] {
  const chunks = Array.from(graphemes.segment(original), (s) => ({
    start: s.index,
    end: s.index + s.segment.length,
    normalised: s.segment.normalize("NFC"),
  }));
  if (chunks.map((c) => c.normalised).join("") === normalised) return chunks;
  return [{ start: 0, end: original.length, normalised }];
}

/** A token in tokenizer_config.json: a string, an object with `content`, or absent. */
export function tokenContent(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return null;
}

/** Offsets are only recovered for the configuration Qwen3 uses; anything else is refused by name. */
function checkSupported(json: TokenizerJson, source: string): void {
  const where = `tokenizer ${source}`;
  if (json.model?.type !== "BPE") throw new Error(`${where}: model type ${json.model?.type} is not supported (BPE only)`);
  if (json.normalizer !== null && json.normalizer?.type !== "NFC") {
    throw new Error(`${where}: normalizer ${JSON.stringify(json.normalizer?.type)} is not supported (NFC or none)`);
  }
  const preTokenizers = json.pre_tokenizer?.type === "Sequence" ? json.pre_tokenizer.pretokenizers ?? [] : [json.pre_tokenizer];
  if (!preTokenizers.some((p) => p?.type === "ByteLevel")) throw new Error(`${where}: only byte-level BPE tokenizers are supported`);
  for (const token of json.added_tokens) {
    if (token.normalized || token.lstrip || token.rstrip || token.single_word) {
      throw new Error(
        `${where}: added token ${JSON.stringify(token.content)} uses normalized/lstrip/rstrip/single_word, which is not supported`,
      );
    }
    if (token.content.length === 0) throw new Error(`${where}: added token ${token.id} is empty`);
  }
}

const loaded = new Map<string, Promise<Qwen3Tokenizer>>();

/** Loads `tokenizer.json` and `tokenizer_config.json` from a folder (a checkpoint's `tokenizer/`), once per folder. */
export function loadQwen3Tokenizer(folder: string): Promise<Qwen3Tokenizer> {
  const key = resolve(folder);
  let pending = loaded.get(key);
  if (pending === undefined) {
    pending = readTokenizer(key);
    loaded.set(key, pending);
    pending.catch(() => loaded.delete(key));
  }
  return pending;
}

async function readTokenizer(folder: string): Promise<Qwen3Tokenizer> {
  const [tokenizerJson, config] = await Promise.all([readJson(`${folder}/tokenizer.json`), readJson(`${folder}/tokenizer_config.json`)]);
  return Qwen3Tokenizer.fromJson(tokenizerJson, config, folder);
}

export async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
}
