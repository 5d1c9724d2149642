// kleinscope's command line: `deno task <command>` or `deno run -A cli.ts <command> [options]`.
// Each command lives in cli/<command>.ts and is loaded only when used. Whatever a command throws ends here: usage
// mistakes (unknown option, missing value, …) exit with 2, other errors with 1, each in one line (reportError).

import { reportError, UsageError } from "./cli/common.ts";
import { runPinned, takeGpuOption } from "./runtime/adapter_select.ts";
import { printable } from "./runtime/printable.ts";

const COMMANDS: Record<string, { module: string; summary: string }> = {
  demo: { module: "./cli/demo.ts", summary: "text-to-image and an edit on the bundled tiny checkpoint" },
  generate: { module: "./cli/generate.ts", summary: "text-to-image" },
  edit: { module: "./cli/generate.ts", summary: "in-context editing with one or more reference images" },
  run: { module: "./cli/run.ts", summary: "run an experiment spec (JSON)" },
  knockout: { module: "./cli/shortcuts.ts", summary: "attention knockout between token groups" },
  patch: { module: "./cli/shortcuts.ts", summary: "I2I-to-I2I activation patching" },
  lens: { module: "./cli/shortcuts.ts", summary: "decode text-token activations through a text-to-image run" },
  capture: { module: "./cli/shortcuts.ts", summary: "capture activations to safetensors" },
  "attention-flow": { module: "./cli/attention_flow.ts", summary: "attention mass between token groups, per block, step and head" },
  audit: { module: "./cli/audit.ts", summary: "every kernel against its float64 reference" },
  tune: { module: "./cli/tune.ts", summary: "tune the kernel tiles for this adapter again (cached per adapter and driver)" },
  conformance: { module: "./cli/conformance.ts", summary: "replay reference cases and compare" },
  inspect: { module: "./cli/inspect.ts", summary: "list a checkpoint's tensors" },
  download: { module: "./cli/download.ts", summary: "fetch a FLUX.2 klein repository" },
  experiment: { module: "./cli/experiment.ts", summary: "batch runs of task sets (resume, shard, merge), judge, metrics" },
  tasks: { module: "./cli/tasks.ts", summary: "the study's task sets, pairings, SUN397 add/remove and padding dose as task files" },
  report: { module: "./cli/report.ts", summary: "HTML report of an experiment run" },
  verify: { module: "./cli/verify.ts", summary: "run a stored run again and compare its images (mean |Δ| ≤ 1.0 of 255)" },
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  return [
    "kleinscope — FLUX.2 klein on WebGPU, open to experiment",
    "",
    "usage: deno task <command> [options]     (or: deno run -A cli.ts <command> [options])",
    "",
    ...Object.entries(COMMANDS).map(([k, v]) => `  ${k.padEnd(width)}  ${v.summary}`),
    "",
    "Every command explains its options with --help. --gpu N runs a command on GPU N of several (--gpu list shows them).",
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (!command || command === "--help" || command === "-h" || command === "help") {
    console.log(usage());
    return command ? 0 : 2;
  }
  const entry = COMMANDS[command];
  if (!entry) {
    console.error(`error: unknown command "${printable(command)}"\n\n${usage()}`);
    return 2;
  }
  const mod = await import(entry.module);
  try {
    // --gpu N (or KLEINSCOPE_GPU=N): the command runs in a process started pinned to that GPU.
    let gpu: ReturnType<typeof takeGpuOption>;
    try {
      gpu = takeGpuOption(rest);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const code = gpu.gpu === undefined ? undefined : await runPinned(gpu.gpu, [command, ...gpu.args], { program: import.meta.url });
    if (code !== undefined) return code;
    return await mod.main(gpu.args, command);
  } catch (e) {
    return reportError(e, command);
  }
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (e) {
    // Loading a command's module failed: one line too; set KLEINSCOPE_DEBUG=1 for the stack.
    code = reportError(e);
  }
  Deno.exit(code);
}
