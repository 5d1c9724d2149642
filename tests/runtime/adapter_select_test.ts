// Choosing one GPU of several (runtime/adapter_select.ts): listing from each source, the loader's numbering, the
// environment that pins a process, the check a pinned process makes, and the command line's `--gpu`. Without a GPU
// this runs on the llvmpipe adapter. On a host with nvidia-smi, the last test checks the mechanism itself: a
// process pinned to GPU i holds memory on the GPU nvidia-smi shows at that adapter's PCI address, and on no other.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type AdapterEntry,
  type AdapterListing,
  applyPin,
  checkPinnedAdapter,
  describeListing,
  GPU_ADAPTER_ENV,
  GPU_ENV,
  listAdapters,
  listDrmAdapters,
  listVulkanAdapters,
  makeListing,
  parseNvidiaSmi,
  parseVulkaninfoSummary,
  pciText,
  pinnedEnvironment,
  takeGpuOption,
} from "../../runtime/adapter_select.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const CLI = join(ROOT, "cli.ts");
const TINY = join(ROOT, "tests/fixtures/klein-tiny/model");

const envOf = (o: Record<string, string>) => ({ get: (k: string) => o[k] });

function includes(text: string, part: string, message?: string): void {
  assert.ok(text.includes(part), message ?? `expected ${JSON.stringify(part)} in ${JSON.stringify(text)}`);
}

/** The error `fn` throws (it must throw), checked to hold `part` when given. */
function thrown(fn: () => unknown, part?: string): Error {
  try {
    fn();
  } catch (e) {
    if (part !== undefined) includes((e as Error).message, part);
    return e as Error;
  }
  throw new assert.AssertionError({ message: "expected an error" });
}

// Eight H200s as nvidia-smi prints them, not in bus order (nvidia-smi's own index is ignored: the PCI address rules).
const SMI = [
  "3, NVIDIA H200, 00000000:5D:00.0, 0x233510DE",
  "0, NVIDIA H200, 00000000:18:00.0, 0x233510DE",
  "1, NVIDIA H200, 00000000:2A:00.0, 0x233510DE",
  "2, NVIDIA H200, 00000000:3A:00.0, 0x233510DE",
  "4, NVIDIA H200, 00000001:9A:00.0, 0x233510DE",
  "5, NVIDIA H200, 00000000:AB:00.0, 0x233510DE",
  "6, NVIDIA H200, 00000000:BA:00.0, 0x233510DE",
  "7, NVIDIA H200, 00000000:DB:00.0, 0x233510DE",
  "",
].join("\n");

function h200s(layer = true): AdapterListing {
  return makeListing("nvidia-smi", parseNvidiaSmi(SMI), layer);
}

Deno.test("nvidia-smi's lines are numbered by PCI address (domain first), with vendor and device from pci.device_id", () => {
  const l = h200s();
  assert.deepEqual(l.adapters.map((a) => pciText(a.pci!)), [
    "0000:18:00.0",
    "0000:2a:00.0",
    "0000:3a:00.0",
    "0000:5d:00.0",
    "0000:ab:00.0",
    "0000:ba:00.0",
    "0000:db:00.0",
    "0001:9a:00.0",
  ]);
  assert.deepEqual(l.adapters.map((a) => a.index), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual([l.adapters[0].vendorId, l.adapters[0].deviceId], [0x10de, 0x2335]);
  assert.deepEqual(l.adapters[0].name, "NVIDIA H200");
});

Deno.test("the loader's order: discrete, integrated, virtual, other, CPU; software adapters beside hardware are not numbered", () => {
  const found: Omit<AdapterEntry, "index">[] = [
    { name: "llvmpipe", kind: "CPU", vendorId: 0x10005, deviceId: 0 },
    { name: "iGPU", kind: "integrated GPU", pci: { domain: 0, bus: 0, device: 2, function: 0 } },
    { name: "dGPU b", kind: "discrete GPU", pci: { domain: 0, bus: 0x41, device: 0, function: 0 } },
    { name: "virt", kind: "virtual GPU" },
    { name: "dGPU a", kind: "discrete GPU", pci: { domain: 0, bus: 0x03, device: 0, function: 0 } },
  ];
  const l = makeListing("the Vulkan loader", found, true);
  assert.deepEqual(l.adapters.map((a) => a.name), ["dGPU a", "dGPU b", "iGPU", "virt"]);
  assert.deepEqual(l.unnumbered.map((a) => a.name), ["llvmpipe"]);
  includes(describeListing(l), "not numbered: llvmpipe (CPU)");
  // Only software adapters: they are numbered.
  const soft = makeListing("the Vulkan loader", [found[0]], true);
  assert.deepEqual(soft.adapters.map((a) => [a.index, a.name]), [[0, "llvmpipe"]]);
});

Deno.test("vulkaninfo --summary: device blocks parsed, kinds and hex ids read", () => {
  const text = `==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.239

Devices:
========
GPU0:
\tapiVersion         = 1.3.230
\tvendorID           = 0x10005
\tdeviceID           = 0x0000
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
GPU1:
\tapiVersion         = 1.3.277
\tvendorID           = 0x10de
\tdeviceID           = 0x2335
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA H200
`;
  const found = parseVulkaninfoSummary(text);
  assert.deepEqual(found, [
    { name: "llvmpipe (LLVM 15.0.6, 256 bits)", kind: "CPU", vendorId: 0x10005, deviceId: 0 },
    { name: "NVIDIA H200", kind: "discrete GPU", vendorId: 0x10de, deviceId: 0x2335 },
  ]);
});

Deno.test("/sys/class/drm: one adapter per PCI device (card and connectors share it), ids read from the device", () => {
  const root = Deno.makeTempDirSync();
  try {
    const pci = join(root, "devices");
    for (const [addr, vendor, device] of [["0000:3a:00.0", "0x10de", "0x2335"], ["0000:18:00.0", "0x10de", "0x2335"]]) {
      Deno.mkdirSync(join(pci, addr), { recursive: true });
      Deno.writeTextFileSync(join(pci, addr, "vendor"), `${vendor}\n`);
      Deno.writeTextFileSync(join(pci, addr, "device"), `${device}\n`);
    }
    const drm = join(root, "drm");
    for (const [card, addr] of [["card1", "0000:3a:00.0"], ["card0", "0000:18:00.0"], ["card2", "0000:18:00.0"]]) {
      Deno.mkdirSync(join(drm, card), { recursive: true });
      Deno.symlinkSync(join(pci, addr), join(drm, card, "device"));
    }
    Deno.mkdirSync(join(drm, "card0-DP-1")); // a connector: not a card
    const l = makeListing("/sys/class/drm", listDrmAdapters(drm), true);
    assert.deepEqual(l.adapters.map((a) => [a.index, pciText(a.pci!), a.vendorId, a.deviceId]), [
      [0, "0000:18:00.0", 0x10de, 0x2335],
      [1, "0000:3a:00.0", 0x10de, 0x2335],
    ]);
    includes(describeListing(l), "0 = PCI device 10de:2335 (GPU, 0000:18:00.0)");
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("pinning GPU i of identical ones: Mesa's device-select layer by PCI address, alone; the caller's selection dropped", () => {
  const l = h200s();
  const pin = pinnedEnvironment(l, 3);
  assert.deepEqual(pin.set.DRI_PRIME, "pci-0000_5d_00_0");
  assert.deepEqual(pin.set.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE, "1");
  assert.deepEqual(pin.set[GPU_ENV], "3");
  assert.deepEqual(JSON.parse(pin.set[GPU_ADAPTER_ENV]), {
    index: 3,
    name: "NVIDIA H200",
    vendorId: 0x10de,
    deviceId: 0x2335,
    pci: "0000:5d:00.0",
  });
  const env = applyPin({ MESA_VK_DEVICE_SELECT: "1002:73bf", NODEVICE_SELECT: "1", DRI_PRIME: "1", PATH: "/bin" }, pin);
  assert.deepEqual(env.MESA_VK_DEVICE_SELECT, undefined, "an explicit vid:did would win over DRI_PRIME");
  assert.deepEqual(env.NODEVICE_SELECT, undefined, "it would switch the layer off");
  assert.deepEqual(env.DRI_PRIME, "pci-0000_5d_00_0");
  assert.deepEqual(env.PATH, "/bin");
  // The domain is part of the tag.
  assert.deepEqual(pinnedEnvironment(l, 7).set.DRI_PRIME, "pci-0001_9a_00_0");
});

/** Mesa's device-select layer as it behaves with `pin` over `listing`'s adapters (in the loader's order): the adapter
 * DRI_PRIME names — or, as Mesa 22.3's compares it, the last one it does not name — shown alone when forced. */
function layer(listing: AdapterListing, inverted: boolean) {
  return (pin: { set: Record<string, string> }) => {
    const all = listing.adapters.map(({ index: _, ...a }) => a);
    const tag = (a: Omit<AdapterEntry, "index">) =>
      `pci-${a.pci!.domain.toString(16).padStart(4, "0")}_${a.pci!.bus.toString(16).padStart(2, "0")}_00_0`;
    let chosen = 0;
    all.forEach((a, i) => {
      if ((tag(a) === pin.set.DRI_PRIME) !== inverted) chosen = i;
    });
    const first = [all[chosen], ...all.filter((_, i) => i !== chosen)];
    return pin.set.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE === "1" ? [first[0]] : first;
  };
}

Deno.test("every pin is tried on the Vulkan loader first: a layer that shows another GPU (Mesa 22.3) is refused before use", () => {
  const good = h200s();
  good.probe = layer(good, false);
  assert.equal(pinnedEnvironment(good, 5).set.DRI_PRIME, "pci-0000_ba_00_0");
  const bad = h200s();
  bad.probe = layer(bad, true);
  const e = thrown(() => pinnedEnvironment(bad, 5), "GPU 5 (5 = NVIDIA H200 (discrete GPU, 0000:ba:00.0)) cannot be chosen on this host");
  includes(e.message, "a process is shown NVIDIA H200 (0001:9a:00.0)");
  includes(e.message, "Mesa 22.3's device-select layer");
  // A layer that only moves the chosen adapter to the front (no forcing): wgpu takes the first discrete GPU, the chosen one.
  const front = h200s();
  const probe = layer(front, false);
  front.probe = (pin) => probe({ set: { ...pin.set, MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "0" } });
  assert.equal(pinnedEnvironment(front, 2).set.DRI_PRIME, "pci-0000_3a_00_0");
  // One GPU beside llvmpipe under Mesa 22.3: the layer would show llvmpipe, so GPU 0 is had with the layer switched off.
  const single = makeListing("the Vulkan loader", [
    {
      name: "NVIDIA H200",
      kind: "discrete GPU",
      vendorId: 0x10de,
      deviceId: 0x2335,
      pci: { domain: 0, bus: 0x18, device: 0, function: 0 },
    },
    { name: "llvmpipe", kind: "CPU", vendorId: 0x10005, deviceId: 0 },
  ], true);
  const [gpu, cpu] = [{ ...single.adapters[0], index: undefined }, single.unnumbered[0]];
  single.probe = (pin) => pin.set.NODEVICE_SELECT === "1" ? [gpu, cpu] : [cpu];
  const plain = pinnedEnvironment(single, 0);
  assert.equal(plain.set.NODEVICE_SELECT, "1");
  assert.equal(plain.set.DRI_PRIME, undefined);
  assert.ok(plain.unset.includes("DRI_PRIME") && plain.unset.includes("MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE"));
  // Shown nothing at all.
  const none = h200s();
  none.probe = () => [];
  thrown(() => pinnedEnvironment(none, 0), "WebGPU would open nothing");
});

Deno.test("a GPU that does not exist is refused naming the adapters found and where they were found", () => {
  const e = thrown(() => pinnedEnvironment(h200s(), 8));
  includes(e.message, "there is no GPU 8");
  includes(e.message, "8 adapter(s) found through nvidia-smi: 0 = NVIDIA H200 (discrete GPU, 0000:18:00.0)");
  const one = makeListing("the Vulkan loader", [{ name: "llvmpipe (LLVM 15)", kind: "CPU", vendorId: 0x10005, deviceId: 0 }], false);
  assert.match(thrown(() => pinnedEnvironment(one, 1)).message, /no GPU 1: 1 adapter\(s\) found through the Vulkan loader: 0 = llvmpipe/);
});

Deno.test("without the device-select layer: GPU 0 (the one wgpu takes) works, another is refused saying what to install", () => {
  const l = h200s(false);
  const zero = pinnedEnvironment(l, 0);
  assert.deepEqual(zero.set.DRI_PRIME, undefined);
  assert.deepEqual(zero.set[GPU_ENV], "0");
  const e = thrown(() => pinnedEnvironment(l, 2));
  includes(e.message, "mesa-vulkan-drivers");
  includes(e.message, "VK_LAYER_MESA_device_select");
  // With the layer, even the only GPU is chosen through it (so that llvmpipe beside it is out of sight too).
  const one = makeListing("nvidia-smi", parseNvidiaSmi(SMI.split("\n")[1]), false);
  assert.deepEqual(Object.keys(pinnedEnvironment(one, 0).set).sort(), [GPU_ENV, GPU_ADAPTER_ENV, "NODEVICE_SELECT"].sort());
  assert.equal(pinnedEnvironment({ ...one, deviceSelectLayer: true }, 0).set.DRI_PRIME, "pci-0000_18_00_0");
});

Deno.test("without PCI addresses: unique ids are chosen by vid:did, identical ones refused as indistinguishable", () => {
  const mixed = makeListing("vulkaninfo --summary", [
    { name: "NVIDIA H200", kind: "discrete GPU", vendorId: 0x10de, deviceId: 0x2335 },
    { name: "AMD Radeon", kind: "discrete GPU", vendorId: 0x1002, deviceId: 0x73bf },
  ], true);
  assert.deepEqual(pinnedEnvironment(mixed, 1).set.MESA_VK_DEVICE_SELECT, "1002:73bf");
  const twins = makeListing("vulkaninfo --summary", [
    { name: "NVIDIA H200", kind: "discrete GPU", vendorId: 0x10de, deviceId: 0x2335 },
    { name: "NVIDIA H200", kind: "discrete GPU", vendorId: 0x10de, deviceId: 0x2335 },
  ], true);
  includes(thrown(() => pinnedEnvironment(twins, 1)).message, "cannot be told apart");
});

Deno.test("a pinned process checks the adapter it opened: name (any case) and ids, decimal or hex", () => {
  const pin = pinnedEnvironment(h200s(), 2).set;
  checkPinnedAdapter({ description: "NVIDIA H200", vendor: "4318", device: "9013" }, envOf(pin));
  checkPinnedAdapter({ description: "nvidia h200", vendor: "0x10de", device: "" }, envOf(pin));
  assert.match(
    thrown(() => checkPinnedAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)", vendor: "65541" }, envOf(pin))).message,
    /GPU 2 is NVIDIA H200 \(0000:3a:00\.0\), but WebGPU opened "llvmpipe/,
  );
  thrown(() => checkPinnedAdapter({ description: "NVIDIA H200", vendor: "4098" }, envOf(pin)), "selection did not take effect");
  // Not pinned: nothing to check. Asked for a GPU without the parent's pin: refused with what to do.
  checkPinnedAdapter({ description: "anything" }, envOf({}));
  thrown(() => checkPinnedAdapter({ description: "NVIDIA H200" }, envOf({ [GPU_ENV]: "2" })), "not started pinned");
  // A pin for another index than KLEINSCOPE_GPU says is refused too.
  thrown(() => checkPinnedAdapter({ description: "NVIDIA H200" }, envOf({ ...pin, [GPU_ENV]: "5" })), "does not describe GPU 5");
});

Deno.test("--gpu is taken out of any command line; KLEINSCOPE_GPU counts unless the process is already pinned", () => {
  assert.deepEqual(takeGpuOption(["run", "s.json", "--gpu", "3"], envOf({})), { args: ["run", "s.json"], gpu: 3, fromEnv: false });
  assert.deepEqual(takeGpuOption(["--gpu=1", "x"], envOf({})).gpu, 1);
  assert.deepEqual(takeGpuOption(["--gpu", "list"], envOf({})).gpu, "list");
  assert.deepEqual(takeGpuOption(["a", "--", "--gpu", "2"], envOf({})), { args: ["a", "--", "--gpu", "2"], fromEnv: false });
  thrown(() => takeGpuOption(["--gpu", "1", "--gpu", "2"], envOf({})), "twice");
  thrown(() => takeGpuOption(["--gpu"], envOf({})), "needs an adapter number");
  thrown(() => takeGpuOption(["--gpu", "-1"], envOf({})), "must be an adapter number");
  thrown(() => takeGpuOption(["e.json", "--gpus", "all", "--gpu", "1"], envOf({})), "cannot be combined");
  assert.deepEqual(takeGpuOption(["x"], envOf({ [GPU_ENV]: "2" })), { args: ["x"], gpu: 2, fromEnv: true });
  assert.deepEqual(takeGpuOption(["x"], envOf({ [GPU_ENV]: "2", [GPU_ADAPTER_ENV]: "{}" })).gpu, undefined);
});

const vulkan = listVulkanAdapters();

Deno.test({
  name: "this host through the Vulkan loader: every adapter named and numbered from 0",
  ignore: !vulkan,
  fn() {
    const l = listAdapters();
    assert.deepEqual(l.source, "the Vulkan loader");
    assert.ok(l.adapters.length >= 1);
    l.adapters.forEach((a, i) => {
      assert.deepEqual(a.index, i);
      assert.ok(a.name.length > 0, `adapter ${i} has a name`);
    });
  },
});

async function cli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, ...args], env, stdout: "piped", stderr: "piped" })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("the command line: --gpu past the last adapter fails before any work, naming the adapters; bad values are usage mistakes", async () => {
  const n = listAdapters().adapters.length;
  const r = await cli(["inspect", TINY, "--gpu", String(n + 6)]);
  assert.deepEqual(r.code, 1);
  assert.deepEqual(r.stdout, "", "inspect did not run");
  includes(r.stderr, `there is no GPU ${n + 6}: ${n} adapter(s) found through`);
  assert.deepEqual(r.stderr.trim().split("\n").filter((l) => l.startsWith("error:")).length, 1);
  const env = await cli(["inspect", TINY], { [GPU_ENV]: String(n + 6) });
  assert.deepEqual(env.code, 1);
  includes(env.stderr, `there is no GPU ${n + 6}`);
  const bad = await cli(["inspect", TINY, "--gpu", "one"]);
  assert.deepEqual(bad.code, 2);
  includes(bad.stderr, "must be an adapter number");
  const list = await cli(["inspect", "--gpu", "list"]);
  assert.deepEqual(list.code, 0);
  includes(list.stdout, `${n} adapter(s) found through`);
  includes(list.stdout, "0 = ");
});

Deno.test("the command line: --gpu 0 runs the command in a pinned process, with its arguments and exit code", async () => {
  const ok = await cli(["inspect", TINY, "--gpu", "0"]);
  assert.deepEqual(ok.code, 0, ok.stderr);
  includes(ok.stdout, "transformer");
  const missing = await cli(["inspect", "/nonexistent/model", "--gpu=0"]);
  assert.deepEqual(missing.code, 1);
});

/** A process that opens the GPU through openGpu (which checks the pin), holds `mib` MiB on it and waits for stdin. */
const HOLDER = `
import { openGpu } from ${JSON.stringify(new URL("../../runtime/device.ts", import.meta.url).href)};
const mib = Number(Deno.args[0] ?? 0);
const gpu = await openGpu({ maxBufferSize: Math.max(mib, 1) * 2 ** 20 });
if (mib) {
  const buf = gpu.device.createBuffer({ size: mib * 2 ** 20, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  gpu.device.queue.writeBuffer(buf, (mib * 2 ** 20) - 4096, new Uint8Array(4096).fill(7));
  await gpu.device.queue.onSubmittedWorkDone();
}
console.log("ready " + gpu.adapterDescription);
for await (const _ of Deno.stdin.readable) { /* until closed */ }
`;

async function holdOn(pin: { set: Record<string, string>; unset: string[] }, mib: number) {
  const dir = Deno.makeTempDirSync();
  Deno.writeTextFileSync(join(dir, "hold.ts"), HOLDER);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(dir, "hold.ts"), String(mib)],
    env: applyPin(Deno.env.toObject(), pin),
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  return {
    line: text.trim(),
    async end() {
      await child.stdin.close();
      await reader.cancel();
      const status = await child.status;
      const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
      Deno.removeSync(dir, { recursive: true });
      return { code: status.code, stderr: err };
    },
  };
}

Deno.test({
  name: "a process pinned to GPU 0 opens that adapter; a pin naming another adapter is refused by openGpu",
  ignore: !vulkan,
  async fn() {
    const l = listAdapters();
    const pin = pinnedEnvironment(l, 0);
    // The pin was tried on the Vulkan loader (listing.probe) before it is used here; whichever it is, it must work.
    assert.ok(l.probe);
    const held = await holdOn(pin, 0);
    assert.deepEqual(held.line, `ready ${l.adapters[0].name}`);
    assert.deepEqual((await held.end()).code, 0);
    const wrong = pinnedEnvironment(l, 0);
    wrong.set[GPU_ADAPTER_ENV] = JSON.stringify({ index: 0, name: "Imaginary GPU 9000" });
    const refused = await holdOn(wrong, 0);
    const end = await refused.end();
    assert.ok(end.code !== 0);
    includes(end.stderr, 'GPU 0 is Imaginary GPU 9000, but WebGPU opened "');
  },
});

function nvidiaMemory(): Map<string, number> | undefined {
  try {
    const out = new Deno.Command("nvidia-smi", { args: ["--query-gpu=pci.bus_id,memory.used", "--format=csv,noheader,nounits"] })
      .outputSync();
    if (!out.success) return undefined;
    const m = new Map<string, number>();
    for (const line of new TextDecoder().decode(out.stdout).trim().split("\n")) {
      const [bus, used] = line.split(",").map((s) => s.trim());
      m.set(bus.toLowerCase().replace(/^0000(?=[0-9a-f]{4}:)/, ""), Number(used));
    }
    return m;
  } catch {
    return undefined;
  }
}

Deno.test({
  name: "NVIDIA: a process pinned to GPU i holds memory on the GPU at that PCI address and no other; GPU n is refused",
  ignore: !nvidiaMemory() || !vulkan,
  sanitizeResources: false,
  async fn() {
    const l = listAdapters();
    console.log(describeListing(l));
    const HOLD_MIB = 2048;
    for (const a of l.adapters) {
      assert.ok(a.pci, `adapter ${a.index} has a PCI address`);
      const before = nvidiaMemory()!;
      const pin = pinnedEnvironment(l, a.index);
      const how = pin.set.DRI_PRIME ? `DRI_PRIME=${pin.set.DRI_PRIME}` : "no selection (the device-select layer switched off or absent)";
      console.log(`GPU ${a.index}: ${how}`);
      const held = await holdOn(pin, HOLD_MIB);
      if (held.line !== `ready ${a.name}`) {
        assert.fail(`GPU ${a.index}: the holder said "${held.line}"; stderr: ${(await held.end()).stderr}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
      const during = nvidiaMemory()!;
      assert.deepEqual((await held.end()).code, 0);
      const grew = [...during].map(([bus, used]) => [bus, used - (before.get(bus) ?? 0)] as const);
      console.log(`GPU ${a.index} (${pciText(a.pci!)}): memory change per GPU (MiB): ${grew.map(([b, d]) => `${b} ${d}`).join(", ")}`);
      for (const [bus, delta] of grew) {
        if (bus === pciText(a.pci!)) assert.ok(delta >= HOLD_MIB * 0.9, `GPU ${a.index} at ${bus} grew by ${delta} MiB`);
        else assert.ok(delta < HOLD_MIB / 4, `GPU at ${bus} grew by ${delta} MiB while GPU ${a.index} was pinned`);
      }
    }
    // The layer steers wgpu: pinned to llvmpipe beside the GPU, the process gets llvmpipe, though wgpu would take
    // the GPU (high-performance) left to itself.
    const soft = l.unnumbered.find((a) => a.kind === "CPU");
    if (l.deviceSelectLayer && soft?.vendorId !== undefined) {
      const pin = {
        set: {
          MESA_VK_DEVICE_SELECT: `${soft.vendorId.toString(16)}:${soft.deviceId!.toString(16)}`,
          MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "1",
          [GPU_ENV]: "0",
          [GPU_ADAPTER_ENV]: JSON.stringify({ index: 0, name: soft.name }),
        },
        unset: ["DRI_PRIME", "NODEVICE_SELECT"],
      };
      const held = await holdOn(pin, 0);
      assert.equal(held.line, `ready ${soft.name}`);
      assert.equal((await held.end()).code, 0);
    } else console.log("no software adapter beside the GPU (or no device-select layer): the steering check is skipped");
    const r = await cli(["inspect", TINY, "--gpu", String(l.adapters.length)]);
    assert.deepEqual(r.code, 1);
    includes(r.stderr, `there is no GPU ${l.adapters.length}: ${l.adapters.length} adapter(s) found through the Vulkan loader`);
  },
});
