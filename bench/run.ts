// `deno task bench <name> [options]`: runs one benchmark of bench/ (each explains its options with --help).
//   matmul      tiled matmul TFLOP/s per shape, --sweep over tile configurations (--small on a software adapter)
//   attention   flash attention TFLOP/s, plain and with a knockout mask, --sweep
//   dit         one transformer forward (real shapes, random weights), per-kernel profile, --compare with PyTorch
//   text_encoder  Qwen3 prompt encoding, --compare with PyTorch
//   pipeline    a whole edit: stage times, GPU memory, --overhead of knockout and capture
//   vae         the VAE's convolutions at 1024² shapes (--sweep over tiles), --vae for a whole encode and decode
//   summary     one table of all of the above at klein-9B shapes (--small on a software adapter), PyTorch side by side
//   ceilings    f32 and packed-f16 multiply-add rates, workgroup- and global-memory bandwidth (--small)
//   sass        (NVIDIA) the machine code the driver compiled for another benchmark's kernels: registers, loop mixes
// PyTorch baselines for the same shapes: python3 bench/torch_baseline.py matmul|attention, bench/torch_flux2.py.

const BENCHES = ["matmul", "attention", "vae", "dit", "text_encoder", "pipeline", "summary", "ceilings", "sass"];

if (import.meta.main) {
  const [name, ...rest] = Deno.args;
  if (!name || !BENCHES.includes(name)) {
    console.error(`usage: deno task bench <${BENCHES.join("|")}> [options]`);
    Deno.exit(2);
  }
  const script = new URL(`./${name}.ts`, import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), { args: ["run", "-A", script, ...rest], stdout: "inherit", stderr: "inherit" }).spawn();
  Deno.exit((await child.status).code);
}
