// Text from files and the network (tensor names, task ids, answers) is echoed in messages: control characters in it
// could move the cursor or clear the screen, so they are shown escaped.

/** `s` with C0/C1 control characters, DEL and lone surrogates escaped (\n → "\\n", ESC → "\\x1b", …). */
export function printable(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        out += s[i] + s[i + 1];
        i++;
        continue;
      }
    }
    if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (c >= 0xd800 && c <= 0xdfff)) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else out += s[i];
  }
  return out;
}
