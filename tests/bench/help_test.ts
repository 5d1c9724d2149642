// Every benchmark explains its options with --help (exit code 0), and refuses an unknown option with a one-line error
// and its usage (exit code 2), before any GPU work.

import assert from "node:assert/strict";
import { runCommand } from "../../bench/common.ts";

const RUN = new URL("../../bench/run.ts", import.meta.url).pathname;
const BENCHES = ["matmul", "attention", "vae", "dit", "text_encoder", "pipeline", "summary", "ceilings", "sass"];

Deno.test("bench: --help and an unknown option, for every benchmark", async () => {
  for (const name of BENCHES) {
    const help = await runCommand(Deno.execPath(), ["run", "-A", RUN, name, "--help"]);
    assert.equal(help.code, 0, `${name} --help: ${help.stderr}`);
    assert.match(help.stdout, new RegExp(`(usage: deno task bench ${name}|bench/${name}\\.ts)`), name);
    const bad = await runCommand(Deno.execPath(), ["run", "-A", RUN, name, "--no-such-option"]);
    assert.equal(bad.code, 2, `${name} --no-such-option: ${bad.stdout}${bad.stderr}`);
    assert.match(bad.stderr, /no-such-option/, name);
    assert.doesNotMatch(bad.stderr, /Uncaught|TypeError/, name);
  }
});
