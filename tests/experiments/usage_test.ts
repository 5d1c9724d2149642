// Exit codes of the command line, decided in one place (cli.ts → reportError): usage mistakes (unknown option,
// missing value, unknown command) exit 2 in `run`, `experiment`, `report` and the shortcuts alike; other errors 1;
// each is one line, with names from the command line shown escaped.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { KLEINSCOPE_DEBUG: "" },
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
}

Deno.test("usage mistakes exit 2 in one line, other errors 1", async () => {
  const cases: [string[], number, RegExp][] = [
    [["run", "--bogus", "x.json"], 2, /^error: Unknown option '--bogus' \(see deno task run --help\)$/],
    [["run", "x.json", "--out"], 2, /^error: Option '--out <value>' argument missing \(see deno task run --help\)$/],
    [["knockout", "--nope"], 2, /^error: Unknown option '--nope' \(see deno task knockout --help\)$/],
    [["capture", "--prompt"], 2, /^error: Option '--prompt <value>' argument missing \(see deno task capture --help\)$/],
    [["experiment", "exp.json", "--bogus"], 2, /^error: Unknown option '--bogus' \(see deno task experiment --help\)$/],
    [["experiment", "merge", "a", "--into"], 2, /^error: Option '--into <value>' argument missing/],
    [["report", "--thumb"], 2, /^error: Option '--thumb <value>' argument missing \(see deno task report --help\)$/],
    [["report", "--bad\x1b[2J"], 2, /^error: Unknown option '--bad\\x1b\[2J'/],
    [["no-such-command\x07"], 2, /^error: unknown command "no-such-command\\x07"/],
    [["experiment", "/no/such/experiment.json"], 1, /^error: .*\/no\/such\/experiment\.json.*no such file/],
    [["run", "/no/such/spec.json"], 1, /^error: .*\/no\/such\/spec\.json/],
  ];
  for (const [args, code, message] of cases) {
    const r = await cli(args);
    assert.equal(r.code, code, `${JSON.stringify(args)}: ${r.stderr}`);
    assert.match(r.stderr.split("\n")[0], message, JSON.stringify(args));
    if (code === 1 || !/unknown command/.test(r.stderr)) {
      assert.equal(r.stderr.split("\n").length, 1, `${JSON.stringify(args)}: ${r.stderr}`);
    }
  }
});
