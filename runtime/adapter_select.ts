// Choosing one GPU of several. WebGPU's requestAdapter returns a single adapter and cannot enumerate them; under
// Deno, wgpu takes the first discrete GPU the Vulkan loader reports. The choice is therefore made below WebGPU, by
// environment variables that Vulkan reads when the process starts it:
//
// - Mesa's device-select layer (VK_LAYER_MESA_device_select, an implicit Vulkan layer in the Debian/Ubuntu package
//   mesa-vulkan-drivers) sits between the loader and every vendor's driver, NVIDIA's included.
//   DRI_PRIME=pci-DDDD_BB_DD_F picks an adapter by PCI address (identical GPUs differ only there),
//   MESA_VK_DEVICE_SELECT=vid:did by its ids, and MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1 shows the process
//   that adapter alone. This is the mechanism used here. Mesa 22.3's layer (Debian 12) compares DRI_PRIME inverted
//   (it takes the last adapter the tag does NOT name; seen in its machine code), so every pin is first tried on the
//   Vulkan loader in this process (listing.probe) and refused, before any process starts, unless Vulkan then shows the
//   adapter asked for; GPU 0 falls back to the layer switched off (wgpu's own choice).
// - Not usable: CUDA_VISIBLE_DEVICES (NVIDIA's Vulkan driver ignores it); the loader's VK_LOADER_DEVICE_SELECT (loader
//   1.3.211 and later) only moves an adapter to the front, and VK_LOADER_DEVICE_ID_FILTER (loader 1.4.326 and later)
//   filters by device id: both go by vendor and device ids, which identical GPUs share.
//
// Adapters are numbered the way the Vulkan loader orders them on Linux: discrete, integrated, virtual, other and
// CPU adapters, each kind by PCI address. On a host of identical NVIDIA GPUs this is nvidia-smi's numbering. They
// are listed through the Vulkan loader itself when it can be loaded (Deno's FFI), else from `vulkaninfo --summary`,
// `nvidia-smi`, or /sys/class/drm, and every message says which.
//
// The selection is an environment read at process start, so a process is pinned by the one that starts it: the
// launcher of shards, or the command line starting itself again for `--gpu N` (or KLEINSCOPE_GPU=N). The pinned
// process carries KLEINSCOPE_GPU and KLEINSCOPE_GPU_ADAPTER (what it must get), and openGpu checks the adapter it
// opened against them (checkPinnedAdapter).

import { fileURLToPath } from "node:url";
import { printable } from "./printable.ts";

export type AdapterKind = "discrete GPU" | "integrated GPU" | "virtual GPU" | "other" | "CPU" | "GPU";

export interface PciAddress {
  domain: number;
  bus: number;
  device: number;
  function: number;
}

export interface AdapterEntry {
  /** The number `--gpu` takes. */
  index: number;
  /** The adapter's name as the driver reports it ("" when the source does not tell it). */
  name: string;
  kind: AdapterKind;
  vendorId?: number;
  deviceId?: number;
  pci?: PciAddress;
}

export type AdapterSource = "the Vulkan loader" | "vulkaninfo --summary" | "nvidia-smi" | "/sys/class/drm";

export interface AdapterListing {
  source: AdapterSource;
  /** The adapters `--gpu` numbers: the hardware ones, or on a host without any, the software ones. */
  adapters: AdapterEntry[];
  /** Software adapters beside hardware ones (llvmpipe next to a GPU): listed in messages, not numbered. */
  unnumbered: Omit<AdapterEntry, "index">[];
  /** Mesa's device-select layer is installed (what choosing among several needs). */
  deviceSelectLayer: boolean;
  /** The adapters Vulkan shows a process started with a pin, in the order it shows them (only where the Vulkan
   * loader could be asked: then pinnedEnvironment checks every pin before it is used). */
  probe?: (pin: Pin) => Omit<AdapterEntry, "index">[] | undefined;
}

/** What pinning changes in a process's environment: variables to set and variables to remove. */
export interface Pin {
  set: Record<string, string>;
  unset: string[];
}

/** What a pinned process must get: written by the parent into KLEINSCOPE_GPU_ADAPTER. */
export interface PinnedAdapter {
  index: number;
  name: string;
  vendorId?: number;
  deviceId?: number;
  pci?: string;
}

export const GPU_ENV = "KLEINSCOPE_GPU";
export const GPU_ADAPTER_ENV = "KLEINSCOPE_GPU_ADAPTER";
const DEVICE_SELECT_LAYER = "VK_LAYER_MESA_device_select";
/** Variables of the device-select layer a pinned process gets from its parent, never from the caller's shell. */
const SELECTION_VARIABLES = ["DRI_PRIME", "MESA_VK_DEVICE_SELECT", "MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE", "NODEVICE_SELECT"];

const KIND_ORDER: AdapterKind[] = ["discrete GPU", "integrated GPU", "GPU", "virtual GPU", "other", "CPU"];

export function pciText(p: PciAddress): string {
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  return `${h(p.domain, 4)}:${h(p.bus, 2)}:${h(p.device, 2)}.${p.function.toString(16)}`;
}

/** "0000:18:00.0" or nvidia-smi's "00000000:18:00.0". */
export function parsePci(text: string): PciAddress | undefined {
  const m = /^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(text.trim());
  if (!m) return undefined;
  return { domain: parseInt(m[1], 16), bus: parseInt(m[2], 16), device: parseInt(m[3], 16), function: parseInt(m[4], 16) };
}

function pciKey(p?: PciAddress): number {
  return p ? ((p.domain * 256 + p.bus) * 32 + p.device) * 8 + p.function : Number.MAX_SAFE_INTEGER;
}

/** Number adapters in the Vulkan loader's Linux order: by kind, then PCI address (then the source's own order). */
export function orderAdapters(found: Omit<AdapterEntry, "index">[]): AdapterEntry[] {
  return found
    .map((a, i) => ({ a, i }))
    .sort((x, y) => KIND_ORDER.indexOf(x.a.kind) - KIND_ORDER.indexOf(y.a.kind) || pciKey(x.a.pci) - pciKey(y.a.pci) || x.i - y.i)
    .map(({ a }, index) => ({ ...a, index }));
}

function hex(n: number | undefined, width = 4): string {
  return n === undefined ? "?" : n.toString(16).padStart(width, "0");
}

export function describeAdapter(a: AdapterEntry): string {
  const name = a.name ? printable(a.name) : `PCI device ${hex(a.vendorId)}:${hex(a.deviceId)}`;
  return `${a.index} = ${name} (${a.kind}${a.pci ? `, ${pciText(a.pci)}` : ""})`;
}

/** "2 adapter(s) found through nvidia-smi: 0 = NVIDIA H200 (…), 1 = …" */
export function describeListing(l: AdapterListing): string {
  const beside = l.unnumbered.length
    ? ` (besides, not numbered: ${l.unnumbered.map((a) => `${printable(a.name)} (${a.kind})`).join(", ")})`
    : "";
  if (!l.adapters.length) return `no adapter found through ${l.source}${beside}`;
  return `${l.adapters.length} adapter(s) found through ${l.source}: ${l.adapters.map(describeAdapter).join(", ")}${beside}`;
}

/** A listing of what a source found: hardware adapters numbered in the loader's order, software ones numbered only
 * when there is no hardware adapter. */
export function makeListing(source: AdapterSource, found: Omit<AdapterEntry, "index">[], deviceSelectLayer: boolean): AdapterListing {
  const hardware = found.filter((a) => a.kind !== "CPU");
  return {
    source,
    adapters: orderAdapters(hardware.length ? hardware : found),
    unnumbered: hardware.length ? found.filter((a) => a.kind === "CPU") : [],
    deviceSelectLayer,
  };
}

// ---- Listing ------------------------------------------------------------------------------------------------

const VK_KINDS: AdapterKind[] = ["other", "integrated GPU", "discrete GPU", "virtual GPU", "CPU"];

function cString(bytes: Uint8Array, offset: number, max: number): string {
  const view = bytes.subarray(offset, offset + max);
  const end = view.indexOf(0);
  return new TextDecoder().decode(view.subarray(0, end < 0 ? max : end));
}

/** The adapters and layers the Vulkan loader reports to this process, in its order, through FFI; undefined when the
 * loader cannot be loaded here (not installed, or no FFI permission). Without `pin`, the device-select layer is kept
 * out (so that a selection already in this process's environment hides nothing) by its own disable variable; with
 * `pin`, the adapters are those a process started with that pin would see: its variables are in place meanwhile. */
export function listVulkanAdapters(pin?: Pin): { adapters: Omit<AdapterEntry, "index">[]; layers: string[] } | undefined {
  const symbols = {
    vkCreateInstance: { parameters: ["buffer", "pointer", "buffer"], result: "i32" },
    vkDestroyInstance: { parameters: ["pointer", "pointer"], result: "void" },
    vkEnumerateInstanceLayerProperties: { parameters: ["buffer", "buffer"], result: "i32" },
    vkEnumeratePhysicalDevices: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
    vkGetPhysicalDeviceProperties: { parameters: ["pointer", "buffer"], result: "void" },
    vkGetPhysicalDeviceProperties2: { parameters: ["pointer", "buffer"], result: "void" },
    vkEnumerateDeviceExtensionProperties: { parameters: ["pointer", "pointer", "buffer", "buffer"], result: "i32" },
  } as const;
  let lib: Deno.DynamicLibrary<typeof symbols> | undefined;
  for (const name of ["libvulkan.so.1", "libvulkan.so", "libvulkan.1.dylib", "vulkan-1.dll"]) {
    try {
      lib = Deno.dlopen(name, symbols);
      break;
    } catch { /* next name, or no loader / no FFI permission */ }
  }
  if (!lib) return undefined;
  const vk = lib.symbols;
  try {
    const count = new Uint32Array(1);
    const layers: string[] = [];
    if (vk.vkEnumerateInstanceLayerProperties(count, null) === 0 && count[0]) {
      const props = new Uint8Array(520 * count[0]); // VkLayerProperties: name[256], 2 × u32, description[256]
      if (vk.vkEnumerateInstanceLayerProperties(count, props) >= 0) {
        for (let i = 0; i < count[0]; i++) layers.push(cString(props, 520 * i, 256));
      }
    }
    // VkApplicationInfo (48 bytes) asking for Vulkan 1.1, and VkInstanceCreateInfo (64 bytes) pointing at it.
    const app = new Uint8Array(48);
    const appView = new DataView(app.buffer);
    appView.setUint32(0, 0, true);
    appView.setUint32(44, (1 << 22) | (1 << 12), true);
    const create = new Uint8Array(64);
    const createView = new DataView(create.buffer);
    createView.setUint32(0, 1, true);
    createView.setBigUint64(24, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(app))), true);
    const handle = new BigUint64Array(1);
    // The layer reads its variables when the instance is created and when adapters are enumerated.
    const restore = withEnvironment(pin ?? { set: { NODEVICE_SELECT: "1" }, unset: [] });
    let result: number;
    try {
      result = vk.vkCreateInstance(create, null, new Uint8Array(handle.buffer));
    } catch (e) {
      restore();
      throw e;
    }
    if (result !== 0) {
      restore();
      return result === -9 ? { adapters: [], layers } : undefined; // -9: VK_ERROR_INCOMPATIBLE_DRIVER, no driver
    }
    const instance = Deno.UnsafePointer.create(handle[0]);
    try {
      if (vk.vkEnumeratePhysicalDevices(instance, count, null) !== 0) return undefined;
      const handles = new BigUint64Array(count[0]);
      if (count[0] && vk.vkEnumeratePhysicalDevices(instance, count, new Uint8Array(handles.buffer)) < 0) return undefined;
      const adapters: Omit<AdapterEntry, "index">[] = [];
      for (const h of handles.subarray(0, count[0])) {
        const device = Deno.UnsafePointer.create(h);
        const props = new Uint8Array(1024); // VkPhysicalDeviceProperties is 824 bytes
        vk.vkGetPhysicalDeviceProperties(device, props);
        const p = new DataView(props.buffer);
        const apiVersion = p.getUint32(0, true);
        const entry: Omit<AdapterEntry, "index"> = {
          name: cString(props, 20, 256),
          kind: VK_KINDS[p.getUint32(16, true)] ?? "other",
          vendorId: p.getUint32(8, true),
          deviceId: p.getUint32(12, true),
        };
        if (apiVersion >= ((1 << 22) | (1 << 12)) && deviceExtensions(vk, device).includes("VK_EXT_pci_bus_info")) {
          // VkPhysicalDeviceProperties2 chained to VkPhysicalDevicePCIBusInfoPropertiesEXT.
          const bus = new Uint8Array(32);
          const busView = new DataView(bus.buffer);
          busView.setUint32(0, 1000212000, true);
          const props2 = new Uint8Array(16 + 1024);
          const props2View = new DataView(props2.buffer);
          props2View.setUint32(0, 1000059001, true);
          props2View.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bus))), true);
          vk.vkGetPhysicalDeviceProperties2(device, props2);
          entry.pci = {
            domain: busView.getUint32(16, true),
            bus: busView.getUint32(20, true),
            device: busView.getUint32(24, true),
            function: busView.getUint32(28, true),
          };
        }
        adapters.push(entry);
      }
      return { adapters, layers };
    } finally {
      vk.vkDestroyInstance(instance, null);
      restore();
    }
  } finally {
    lib.close();
  }
}

/** Apply `pin` to this process's environment; returns what puts it back. */
function withEnvironment(pin: Pin): () => void {
  const keys = [...new Set([...Object.keys(pin.set), ...pin.unset])];
  const before = new Map(keys.map((k) => [k, Deno.env.get(k)]));
  for (const k of pin.unset) Deno.env.delete(k);
  for (const [k, v] of Object.entries(pin.set)) Deno.env.set(k, v);
  return () => {
    for (const [k, v] of before) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  };
}

function deviceExtensions(
  vk: {
    vkEnumerateDeviceExtensionProperties: (d: Deno.PointerValue, l: null, c: Uint32Array, p: Uint8Array | null) => number;
  },
  device: Deno.PointerValue,
): string[] {
  const count = new Uint32Array(1);
  if (vk.vkEnumerateDeviceExtensionProperties(device, null, count, null) !== 0) return [];
  const props = new Uint8Array(260 * count[0]); // VkExtensionProperties: name[256], u32
  if (vk.vkEnumerateDeviceExtensionProperties(device, null, count, props) < 0) return [];
  return Array.from({ length: count[0] }, (_, i) => cString(props, 260 * i, 256));
}

/** `vulkaninfo --summary`'s device blocks ("GPU0:" then "key = value" lines). No PCI addresses. */
export function parseVulkaninfoSummary(text: string): Omit<AdapterEntry, "index">[] {
  const out: Omit<AdapterEntry, "index">[] = [];
  let current: Record<string, string> | undefined;
  const flush = () => {
    if (!current) return;
    const type = (current.deviceType ?? "").replace(/^PHYSICAL_DEVICE_TYPE_/, "");
    const kind: AdapterKind =
      ({ DISCRETE_GPU: "discrete GPU", INTEGRATED_GPU: "integrated GPU", VIRTUAL_GPU: "virtual GPU", CPU: "CPU" } as Record<
        string,
        AdapterKind
      >)[type] ?? "other";
    out.push({
      name: current.deviceName ?? "",
      kind,
      vendorId: current.vendorID ? parseInt(current.vendorID, 16) : undefined,
      deviceId: current.deviceID ? parseInt(current.deviceID, 16) : undefined,
    });
    current = undefined;
  };
  for (const line of text.split("\n")) {
    if (/^GPU\d+:\s*$/.test(line.trim())) {
      flush();
      current = {};
    } else if (current) {
      const m = /^\s+(\w+)\s*=\s*(.*?)\s*$/.exec(line);
      if (m) current[m[1]] = m[2];
      else if (line.trim() && !/^\s/.test(line)) flush();
    }
  }
  flush();
  return out;
}

/** `nvidia-smi --query-gpu=index,name,pci.bus_id,pci.device_id --format=csv,noheader` lines. */
export function parseNvidiaSmi(text: string): Omit<AdapterEntry, "index">[] {
  const out: Omit<AdapterEntry, "index">[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(",").map((f) => f.trim());
    if (fields.length < 4 || !/^\d+$/.test(fields[0])) continue;
    const ids = parseInt(fields[3], 16); // 0xDDDDVVVV
    out.push({ name: fields[1], kind: "discrete GPU", pci: parsePci(fields[2]), vendorId: ids & 0xffff, deviceId: ids >>> 16 });
  }
  return out;
}

/** Display-class PCI devices behind /sys/class/drm/card*: ids and PCI addresses, no names. */
export function listDrmAdapters(root = "/sys/class/drm"): Omit<AdapterEntry, "index">[] {
  const seen = new Map<string, Omit<AdapterEntry, "index">>();
  let names: string[];
  try {
    names = [...Deno.readDirSync(root)].map((e) => e.name).filter((n) => /^card\d+$/.test(n));
  } catch {
    return [];
  }
  for (const name of names) {
    try {
      const dev = Deno.realPathSync(`${root}/${name}/device`);
      const pci = parsePci(dev.slice(dev.lastIndexOf("/") + 1));
      if (!pci || seen.has(pciText(pci))) continue;
      const read = (f: string) => parseInt(Deno.readTextFileSync(`${dev}/${f}`).trim(), 16);
      seen.set(pciText(pci), { name: "", kind: "GPU", pci, vendorId: read("vendor"), deviceId: read("device") });
    } catch { /* not a PCI device */ }
  }
  return [...seen.values()];
}

function runText(cmd: string, args: string[]): string | undefined {
  try {
    const r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "null", stdin: "null" }).outputSync();
    return r.success ? new TextDecoder().decode(r.stdout) : undefined;
  } catch {
    return undefined;
  }
}

function layerInstalledOnDisk(): boolean {
  const home = Deno.env.get("HOME");
  const dataDirs = (Deno.env.get("XDG_DATA_DIRS") || "/usr/local/share:/usr/share").split(":");
  const dirs = [
    ...(Deno.env.get("XDG_DATA_HOME") ? [Deno.env.get("XDG_DATA_HOME")!] : home ? [`${home}/.local/share`] : []),
    "/etc",
    ...dataDirs,
  ].map((d) => `${d}/vulkan/implicit_layer.d`);
  for (const dir of dirs) {
    try {
      for (const e of Deno.readDirSync(dir)) {
        if (e.name.endsWith(".json") && Deno.readTextFileSync(`${dir}/${e.name}`).includes(DEVICE_SELECT_LAYER)) return true;
      }
    } catch { /* no such folder */ }
  }
  return false;
}

/** The adapters of this host, from the first source that answers. */
export function listAdapters(): AdapterListing {
  const vulkan = listVulkanAdapters();
  if (vulkan && vulkan.adapters.length) {
    const listing = makeListing(
      "the Vulkan loader",
      vulkan.adapters,
      vulkan.layers.includes(DEVICE_SELECT_LAYER) || layerInstalledOnDisk(),
    );
    listing.probe = (pin) => listVulkanAdapters(pin)?.adapters;
    return listing;
  }
  const deviceSelectLayer = layerInstalledOnDisk();
  const summary = runText("vulkaninfo", ["--summary"]);
  const fromSummary = summary ? parseVulkaninfoSummary(summary) : [];
  if (fromSummary.length) return makeListing("vulkaninfo --summary", fromSummary, deviceSelectLayer);
  const smi = runText("nvidia-smi", ["--query-gpu=index,name,pci.bus_id,pci.device_id", "--format=csv,noheader"]);
  const fromSmi = smi ? parseNvidiaSmi(smi) : [];
  if (fromSmi.length) return makeListing("nvidia-smi", fromSmi, deviceSelectLayer);
  return makeListing("/sys/class/drm", listDrmAdapters(), deviceSelectLayer);
}

// ---- Selection ----------------------------------------------------------------------------------------------

/** A `--gpu` value: a whole number, or "list". */
export function parseGpuIndex(text: string): number | "list" {
  const t = text.trim();
  if (t === "list") return "list";
  if (!/^\d+$/.test(t) || !Number.isSafeInteger(Number(t))) {
    throw new Error(`--gpu "${printable(text)}" must be an adapter number (0, 1, …) or "list"`);
  }
  return Number(t);
}

/** What the environment of a process pinned to adapter `index` changes: variables to set and variables to remove.
 * Throws, naming the adapters found, when there is no such adapter or it cannot be chosen on this host. */
export function pinnedEnvironment(listing: AdapterListing, index: number): Pin {
  const candidates = candidatePins(listing, index);
  if (!listing.probe) return candidates[0];
  // The first pin under which Vulkan shows a process this adapter first (what wgpu takes).
  const adapter = listing.adapters[index];
  const outcomes: string[] = [];
  for (const pin of candidates) {
    const seen = listing.probe(pin);
    if (!seen) return pin; // the loader cannot be asked after all
    const got = wgpuChoice(seen);
    if (got && sameAdapter(got, adapter)) return pin;
    const vars = Object.entries(pin.set).filter(([k]) => !k.startsWith("KLEINSCOPE_")).map(([k, v]) => `${k}=${v}`).join(" ");
    const shown = seen.map((a) => `${a.name ? printable(a.name) : "?"}${a.pci ? ` (${pciText(a.pci)})` : ""}`).join(", ") || "nothing";
    outcomes.push(`started with ${vars}, a process is shown ${shown}, and WebGPU would open ${got ? printable(got.name) : "nothing"}`);
  }
  throw new Error(
    `GPU ${index} (${describeAdapter(adapter)}) cannot be chosen on this host: ${outcomes.join("; ")}. Mesa 22.3's device-select ` +
      `layer (Debian 12's mesa-vulkan-drivers) compares DRI_PRIME's PCI address inverted; install a newer mesa-vulkan-drivers ` +
      `(e.g. from bookworm-backports), whose layer compares it as documented`,
  );
}

/** The adapter wgpu takes among those Vulkan shows (powerPreference "high-performance"): the first discrete GPU, else the
 * first integrated, else the first of any other kind, else the first CPU adapter. */
export function wgpuChoice(seen: Omit<AdapterEntry, "index">[]): Omit<AdapterEntry, "index"> | undefined {
  for (const kinds of [["discrete GPU"], ["integrated GPU"], ["GPU", "virtual GPU", "other"], ["CPU"]]) {
    const a = seen.find((x) => kinds.includes(x.kind));
    if (a) return a;
  }
  return undefined;
}

function sameAdapter(a: Omit<AdapterEntry, "index">, b: Omit<AdapterEntry, "index">): boolean {
  if (a.pci && b.pci) return pciText(a.pci) === pciText(b.pci);
  return a.name === b.name && a.vendorId === b.vendorId && a.deviceId === b.deviceId;
}

/** The pins that may give a process adapter `index`, best first: through the device-select layer, then — for GPU 0,
 * the adapter wgpu takes anyway — with the layer switched off. */
function candidatePins(listing: AdapterListing, index: number): Pin[] {
  const adapters = listing.adapters;
  const adapter = adapters[index];
  if (!adapter) throw new Error(`there is no GPU ${index}: ${describeListing(listing)}`);
  const pinned: PinnedAdapter = { index, name: adapter.name, vendorId: adapter.vendorId, deviceId: adapter.deviceId };
  if (adapter.pci) pinned.pci = pciText(adapter.pci);
  const set: Record<string, string> = { [GPU_ENV]: String(index), [GPU_ADAPTER_ENV]: JSON.stringify(pinned) };
  const unset = SELECTION_VARIABLES.filter((k) => k !== "NODEVICE_SELECT");
  const plain: Pin = { set: { ...set, NODEVICE_SELECT: "1" }, unset };
  if (!listing.deviceSelectLayer) {
    // Without the layer, only the adapter wgpu takes anyway (the first in the loader's order) can be had.
    if (index === 0) return [plain];
    throw new Error(
      `choosing GPU ${index} needs Mesa's device-select Vulkan layer (${DEVICE_SELECT_LAYER}, in the package mesa-vulkan-drivers: ` +
        `apt-get install mesa-vulkan-drivers), which is not installed; ${describeListing(listing)}`,
    );
  }
  if (adapter.pci) {
    const p = adapter.pci;
    set.DRI_PRIME = `pci-${hex(p.domain)}_${hex(p.bus, 2)}_${hex(p.device, 2)}_${p.function}`;
  } else if (
    adapter.vendorId !== undefined && adapter.deviceId !== undefined &&
    adapters.filter((a) => a.vendorId === adapter.vendorId && a.deviceId === adapter.deviceId).length === 1
  ) {
    set.MESA_VK_DEVICE_SELECT = `${adapter.vendorId.toString(16)}:${adapter.deviceId.toString(16)}`;
  } else {
    throw new Error(
      `GPU ${index} cannot be told apart from the others: ${listing.source} gives no PCI address for it and another adapter ` +
        `has the same ids; ${describeListing(listing)}`,
    );
  }
  set.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE = "1";
  const layer: Pin = { set, unset: SELECTION_VARIABLES.filter((k) => !(k in set)) };
  return index === 0 ? [layer, plain] : [layer];
}

/** `base` with a pin applied. */
export function applyPin(base: Record<string, string>, pin: Pin): Record<string, string> {
  const env = { ...base };
  for (const k of pin.unset) delete env[k];
  return Object.assign(env, pin.set);
}

/** The adapter this process was pinned to, from its environment (undefined when it was not). */
export function pinnedAdapter(env: { get(key: string): string | undefined } = Deno.env): PinnedAdapter | undefined {
  const text = env.get(GPU_ADAPTER_ENV);
  if (!text) return undefined;
  try {
    const p = JSON.parse(text) as PinnedAdapter;
    if (typeof p.index === "number" && typeof p.name === "string" && String(p.index) === env.get(GPU_ENV)) return p;
  } catch { /* refused below */ }
  throw new Error(
    `${GPU_ADAPTER_ENV} does not describe GPU ${printable(env.get(GPU_ENV) ?? "(unset)")}; it is set by kleinscope, unset it`,
  );
}

/** WebGPU's vendor and device strings: decimal or 0x-hex ids. */
function idOf(text: string | undefined): number | undefined {
  if (!text) return undefined;
  const n = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : /^\d+$/.test(text) ? Number(text) : NaN;
  return Number.isFinite(n) ? n : undefined;
}

/** In a process asked for a GPU (KLEINSCOPE_GPU), check that the adapter WebGPU opened is the one asked for. Called by
 * openGpu before it creates the device. */
export function checkPinnedAdapter(
  info: { description?: string; vendor?: string; device?: string },
  env: { get(key: string): string | undefined } = Deno.env,
): void {
  const asked = env.get(GPU_ENV);
  if (asked === undefined || asked === "") return;
  const pinned = pinnedAdapter(env);
  if (!pinned) {
    throw new Error(
      `${GPU_ENV}=${printable(asked)} is set, but this process was not started pinned to that adapter: the choice is made when a ` +
        `process starts, so run through the command line (deno task …, which starts the run again pinned) or start your program ` +
        `with the variables that pinnedEnvironment() in runtime/adapter_select.ts returns`,
    );
  }
  const got = (info.description ?? "").trim();
  const sameName = pinned.name ? got.toLowerCase() === pinned.name.trim().toLowerCase() : true;
  const vendor = idOf(info.vendor), device = idOf(info.device);
  const sameIds = (pinned.vendorId === undefined || vendor === undefined || vendor === pinned.vendorId) &&
    (pinned.deviceId === undefined || device === undefined || device === pinned.deviceId);
  if (!sameName || !sameIds) {
    throw new Error(
      `GPU ${pinned.index} is ${printable(pinned.name || `PCI device ${hex(pinned.vendorId)}:${hex(pinned.deviceId)}`)}` +
        `${pinned.pci ? ` (${pinned.pci})` : ""}, but WebGPU opened "${printable(got)}" (vendor ${printable(info.vendor ?? "?")}, ` +
        `device ${printable(info.device ?? "?")}): the selection did not take effect (is ${DEVICE_SELECT_LAYER} installed, and ` +
        `DENO_WEBGPU_BACKEND vulkan or unset?)`,
    );
  }
}

// ---- The command line's `--gpu N` -----------------------------------------------------------------------------

/** Take `--gpu N` / `--gpu=N` out of a command line; without it, KLEINSCOPE_GPU (unless this process is already
 * pinned). Throws on a malformed value (a usage mistake). */
export function takeGpuOption(
  args: string[],
  env: { get(key: string): string | undefined } = Deno.env,
): { args: string[]; gpu?: number | "list"; fromEnv: boolean } {
  const rest: string[] = [];
  let value: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      rest.push(...args.slice(i));
      break;
    }
    if (a === "--gpu" || a.startsWith("--gpu=")) {
      if (value !== undefined) throw new Error("--gpu is given twice");
      value = a === "--gpu" ? args[++i] : a.slice("--gpu=".length);
      if (value === undefined) throw new Error('--gpu needs an adapter number (0, 1, …) or "list"');
    } else rest.push(a);
  }
  if (value !== undefined) {
    if (rest.some((a) => a === "--gpus" || a.startsWith("--gpus="))) throw new Error("--gpu and --gpus cannot be combined");
    return { args: rest, gpu: parseGpuIndex(value), fromEnv: false };
  }
  const fromEnv = env.get(GPU_ENV);
  if (fromEnv && !env.get(GPU_ADAPTER_ENV)) return { args: rest, gpu: parseGpuIndex(fromEnv), fromEnv: true };
  return { args: rest, fromEnv: false };
}

/** Run `program` (a file URL; default: this process's main module) with `args` in a new process pinned to GPU `gpu`,
 * and return its exit code; or undefined when this process is already pinned to that GPU (then the caller goes on
 * itself). `--gpu list` prints the adapters and returns 0. Throws, naming the adapters found, for a GPU that does not
 * exist or cannot be chosen — before any work. */
export async function runPinned(
  gpu: number | "list",
  args: string[],
  options: { program?: string; listing?: AdapterListing } = {},
): Promise<number | undefined> {
  const listing = options.listing ?? listAdapters();
  if (gpu === "list") {
    console.log(`${listing.adapters.length} adapter(s) found through ${listing.source}:`);
    for (const a of listing.adapters) console.log(`  ${describeAdapter(a)}`);
    for (const a of listing.unnumbered) console.log(`  (not numbered: ${printable(a.name)}, ${a.kind})`);
    console.log(`${DEVICE_SELECT_LAYER} (needed to choose among several) is ${listing.deviceSelectLayer ? "" : "not "}installed`);
    return 0;
  }
  const already = pinnedAdapter();
  if (already && already.index === gpu) return undefined;
  const pin = pinnedEnvironment(listing, gpu);
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fileURLToPath(options.program ?? Deno.mainModule), ...args],
    env: applyPin(Deno.env.toObject(), pin),
    clearEnv: true,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  });
  const child = command.spawn();
  // Ctrl-C reaches the child through the terminal's process group; this process waits for it to stop.
  const ignore = () => {};
  const forward = () => child.kill("SIGTERM");
  Deno.addSignalListener("SIGINT", ignore);
  Deno.addSignalListener("SIGTERM", forward);
  try {
    const status = await child.status;
    return status.signal ? 128 + (SIGNAL_NUMBERS[status.signal] ?? 1) : status.code;
  } finally {
    Deno.removeSignalListener("SIGINT", ignore);
    Deno.removeSignalListener("SIGTERM", forward);
  }
}

const SIGNAL_NUMBERS: Partial<Record<Deno.Signal, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15, SIGABRT: 6 };
