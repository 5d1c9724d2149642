import assert from "node:assert/strict";
import { printable } from "../../runtime/printable.ts";

Deno.test("printable escapes control characters, DEL, C1 and lone surrogates, and keeps other text", () => {
  assert.equal(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
  assert.equal(printable("x\ny\tz\r"), "x\\ny\\tz\\r");
  assert.equal(printable("\x7f\x9b"), "\\x7f\\x9b");
  assert.equal(printable("\ud800x"), "\\xd800x");
  assert.equal(printable("café ☕ 日本 😀"), "café ☕ 日本 😀");
});
