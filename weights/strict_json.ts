// A strict JSON reader for the headers and indexes of checkpoints, where JSON.parse is too lenient: it keeps the
// last of duplicate keys, turns lone surrogate escapes into strings no file name can hold, and forgets whether a
// number was written as an integer (`4` and `4.0` both become 4). This reader refuses duplicate keys and lone
// surrogates, keeps integer literals exact as bigint, and keeps objects as Maps, so that a key such as
// "__proto__" is just a key. Grammar: RFC 8259, whitespace = space, tab, LF, CR (a byte-order mark is not).

import { printable } from "../runtime/printable.ts";

/** A parsed value: integer literals (digits, optional minus, no fraction or exponent) are bigint; any other number
 * is a finite number (`-0` is the number -0, as the reference safetensors reader treats it as a float). */
export type JsonValue = null | boolean | string | number | bigint | JsonValue[] | Map<string, JsonValue>;

/** Nesting deeper than this is refused (the reference's JSON reader stops at the same depth). */
export const MAX_JSON_DEPTH = 128;

export class StrictJsonError extends Error {
  constructor(readonly reason: string, readonly position: number) {
    super(`${reason} at character ${position}`);
  }
}

/** Parse `text` as one JSON value; throws StrictJsonError (reason and character position) on anything else. */
export function parseStrictJson(text: string): JsonValue {
  if (text.charCodeAt(0) === 0xfeff) throw new StrictJsonError("text starts with a byte-order mark (U+FEFF)", 0);
  const p = new Parser(text);
  p.space();
  const v = p.value(0);
  p.space();
  if (p.at < text.length) p.fail("unexpected text after the JSON value");
  return v;
}

/** A name from a file (tensor, key, shard) quoted for a message: control characters escaped, very long names cut. */
export function quoteName(s: string, max = 200): string {
  return `"${printable(s.length > max ? `${s.slice(0, max - 3)}...` : s)}"`;
}

/** A short description of a strict-JSON value for error messages (strings shown escaped and shortened). */
export function describeStrict(v: JsonValue | undefined): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") return Object.is(v, -0) ? "-0" : Number.isInteger(v) && Math.abs(v) < 1e21 ? `${v}.0` : String(v);
  if (typeof v === "boolean") return String(v);
  if (typeof v === "string") {
    // JSON.stringify escapes control characters and lone surrogates, so the result is printable.
    return printable(JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v));
  }
  if (v instanceof Map) return "an object";
  const inner = v.map((x) => (x instanceof Map || Array.isArray(x) ? "…" : describeStrict(x))).join(", ");
  return inner.length <= 60 ? `[${inner}]` : `an array of ${v.length}`;
}

class Parser {
  at = 0;
  constructor(private readonly s: string) {}

  fail(reason: string, at = this.at): never {
    throw new StrictJsonError(printable(reason), at);
  }

  space(): void {
    const s = this.s;
    while (this.at < s.length) {
      const c = s.charCodeAt(this.at);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) break;
      this.at++;
    }
  }

  value(depth: number): JsonValue {
    const c = this.s.charCodeAt(this.at);
    if (c === 0x7b) return this.object(depth + 1); // {
    if (c === 0x5b) return this.array(depth + 1); // [
    if (c === 0x22) return this.string(); // "
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    if (this.s.startsWith("true", this.at)) return this.word(4, true);
    if (this.s.startsWith("false", this.at)) return this.word(5, false);
    if (this.s.startsWith("null", this.at)) return this.word(4, null);
    return this.fail(Number.isNaN(c) ? "the text ends where a value should be" : `unexpected character ${JSON.stringify(this.s[this.at])}`);
  }

  private word<T>(n: number, v: T): T {
    this.at += n;
    return v;
  }

  private object(depth: number): Map<string, JsonValue> {
    if (depth > MAX_JSON_DEPTH) this.fail(`nested more than ${MAX_JSON_DEPTH} levels deep`);
    this.at++;
    const out = new Map<string, JsonValue>();
    this.space();
    if (this.s.charCodeAt(this.at) === 0x7d) {
      this.at++;
      return out;
    }
    for (;;) {
      this.space();
      if (this.s.charCodeAt(this.at) !== 0x22) this.fail("expected a string key");
      const keyAt = this.at;
      const key = this.string();
      if (out.has(key)) this.fail(`duplicate key ${describeStrict(key)}`, keyAt);
      this.space();
      if (this.s.charCodeAt(this.at) !== 0x3a) this.fail("expected ':' after a key");
      this.at++;
      this.space();
      out.set(key, this.value(depth));
      this.space();
      const c = this.s.charCodeAt(this.at++);
      if (c === 0x7d) return out;
      if (c !== 0x2c) this.fail("expected ',' or '}' in an object", this.at - 1);
    }
  }

  private array(depth: number): JsonValue[] {
    if (depth > MAX_JSON_DEPTH) this.fail(`nested more than ${MAX_JSON_DEPTH} levels deep`);
    this.at++;
    const out: JsonValue[] = [];
    this.space();
    if (this.s.charCodeAt(this.at) === 0x5d) {
      this.at++;
      return out;
    }
    for (;;) {
      this.space();
      out.push(this.value(depth));
      this.space();
      const c = this.s.charCodeAt(this.at++);
      if (c === 0x5d) return out;
      if (c !== 0x2c) this.fail("expected ',' or ']' in an array", this.at - 1);
    }
  }

  private string(): string {
    const s = this.s;
    const start = ++this.at;
    // Fast path: no escapes.
    let i = start;
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        this.at = i + 1;
        return s.slice(start, i);
      }
      if (c === 0x5c) break;
      if (c < 0x20) this.fail("a control character inside a string (it must be escaped)", i);
    }
    let out = s.slice(start, i);
    this.at = i;
    for (;;) {
      if (this.at >= s.length) this.fail("the text ends inside a string");
      const c = s.charCodeAt(this.at);
      if (c === 0x22) {
        this.at++;
        return out;
      }
      if (c < 0x20) this.fail("a control character inside a string (it must be escaped)");
      if (c !== 0x5c) {
        out += s[this.at++];
        continue;
      }
      const e = s[this.at + 1];
      const simple = ESCAPES[e];
      if (simple !== undefined) {
        out += simple;
        this.at += 2;
        continue;
      }
      if (e !== "u") this.fail(`invalid escape ${JSON.stringify("\\" + (e ?? ""))}`);
      const unit = this.hex4(this.at + 2);
      this.at += 6;
      if (unit >= 0xdc00 && unit <= 0xdfff) {
        this.fail("a lone low surrogate escape (\\udc00-\\udfff without a high one before it)", this.at - 6);
      }
      if (unit >= 0xd800 && unit <= 0xdbff) {
        if (s[this.at] !== "\\" || s[this.at + 1] !== "u") {
          this.fail("a lone high surrogate escape (\\ud800-\\udbff not followed by a low one)", this.at - 6);
        }
        const low = this.hex4(this.at + 2);
        if (low < 0xdc00 || low > 0xdfff) {
          this.fail("a lone high surrogate escape (\\ud800-\\udbff not followed by a low one)", this.at - 6);
        }
        out += String.fromCharCode(unit, low);
        this.at += 6;
        continue;
      }
      out += String.fromCharCode(unit);
    }
  }

  private hex4(at: number): number {
    const h = this.s.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) this.fail("a \\u escape needs four hex digits", at);
    return parseInt(h, 16);
  }

  private number(): number | bigint {
    const s = this.s;
    const start = this.at;
    const digit = (i: number) => {
      const c = s.charCodeAt(i);
      return c >= 0x30 && c <= 0x39;
    };
    let i = start;
    if (s.charCodeAt(i) === 0x2d) i++; // -
    if (s.charCodeAt(i) === 0x30) i++; // a leading 0 stands alone
    else if (digit(i)) { while (digit(i)) i++; }
    else this.fail("a number needs a digit", i);
    let integer = true;
    if (s.charCodeAt(i) === 0x2e) { // .
      integer = false;
      i++;
      if (!digit(i)) this.fail("a fraction needs a digit", i);
      while (digit(i)) i++;
    }
    const e = s.charCodeAt(i);
    if (e === 0x65 || e === 0x45) { // e E
      integer = false;
      i++;
      const sign = s.charCodeAt(i);
      if (sign === 0x2b || sign === 0x2d) i++;
      if (!digit(i)) this.fail("an exponent needs a digit", i);
      while (digit(i)) i++;
    }
    this.at = i;
    // Short integer literals (the usual case: shapes and offsets) go through an exact double, which is faster.
    if (integer && i - start <= 15 && !(i - start === 2 && s.charCodeAt(start) === 0x2d && s.charCodeAt(start + 1) === 0x30)) {
      return BigInt(Number(s.slice(start, i)));
    }
    const text = s.slice(start, i);
    if (integer && text !== "-0") return BigInt(text);
    const v = Number(text);
    if (!Number.isFinite(v)) this.fail(`number ${text} is out of range`, start);
    return v;
  }
}

const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** A strict-JSON value as plain JavaScript (objects without prototype keys; bigint → number when safe). */
export function toPlain(v: JsonValue): unknown {
  if (v instanceof Map) {
    const o: Record<string, unknown> = Object.create(null);
    for (const [k, x] of v) o[k] = toPlain(x);
    return { ...o };
  }
  if (Array.isArray(v)) return v.map(toPlain);
  if (typeof v === "bigint") return Number(v);
  return v;
}
