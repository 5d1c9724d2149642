// On Linux the device layer starts only Deno's Vulkan backend unless DENO_WEBGPU_BACKEND names one (runtime/device.ts
// preferVulkanOnLinux); a choice the user made is kept.

import assert from "node:assert/strict";

const DEVICE = new URL("../../runtime/device.ts", import.meta.url).href;

async function backendAfterOpen(env: Record<string, string>, clear: boolean): Promise<string> {
  const code = `import { preferVulkanOnLinux } from ${JSON.stringify(DEVICE)};
preferVulkanOnLinux();
console.log(Deno.env.get("DENO_WEBGPU_BACKEND") ?? "(unset)");`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env,
    clearEnv: clear,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("device: Vulkan alone on Linux unless DENO_WEBGPU_BACKEND is set; the user's choice is kept", async () => {
  const path = Deno.env.get("PATH") ?? "";
  const unset = await backendAfterOpen({ PATH: path }, true);
  assert.equal(unset, Deno.build.os === "linux" ? "vulkan" : "(unset)");
  assert.equal(await backendAfterOpen({ PATH: path, DENO_WEBGPU_BACKEND: "vulkan,gl" }, true), "vulkan,gl");
});
