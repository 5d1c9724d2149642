// Records image-js 1.7.0's SSIM (computeSsim, algorithm "original") on the pairs of ssim_pairs.ts into
// ssim_expected.json beside this file, the values ssim_test.ts holds experiments/metrics.ts to. kleinscope does not
// depend on image-js: the package is imported by a computed name so that checking or locking the project never
// resolves it. To record again (this leaves deno.lock alone):
//   deno run --no-lock -A tests/experiments/ssim_record.ts
import { SSIM_PAIRS } from "./ssim_pairs.ts";

const pkg = ["npm:image-js", "1.7.0"].join("@");
const { Image } = await import(pkg);
const { computeSsim } = await import(`${pkg}/ssim`);

const mssim: Record<string, number> = {};
for (const [name, make] of Object.entries(SSIM_PAIRS)) {
  const [a, b] = make();
  const toImage = (x: typeof a) => new Image(x.width, x.height, { colorModel: "RGB", data: x.data });
  mssim[name] = computeSsim(toImage(a), toImage(b), { algorithm: "original" }).mssim;
  console.log(`${name}: ${mssim[name]}`);
}
const out = new URL("ssim_expected.json", import.meta.url);
await Deno.writeTextFile(out, JSON.stringify({ source: "image-js 1.7.0 computeSsim, algorithm original", mssim }, null, 2) + "\n");
