import assert from "node:assert/strict";
import { describeAdapter, getGpu } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { Rng } from "../../runtime/random.ts";
import { formatAuditTable, runAuditCase } from "../../kernels/audit.ts";
import { attentionAuditCases, attentionCase, attentionReference } from "../../kernels/reference/attention.ts";
import { renderKernel } from "../../runtime/kernel.ts";
import {
  attention,
  ATTENTION_SWEEP_CONFIGS,
  attentionConfigFor,
  attentionConfigName,
  attentionTiles,
  attentionWorkgroupBytes,
  BUILTIN_ATTENTION_TILES,
  defaultAttentionConfig,
  fullyMaskedQueries,
  groupMaskBits,
  loadAttentionTuning,
  parseAttentionConfigName,
  setAttentionGroupMask,
  softwareAttentionConfig,
} from "../../kernels/attention.ts";

const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);

Deno.test("attention: every audit case matches the float64 reference", async () => {
  const gpu = await getGpu();
  const results = [];
  for (const c of attentionAuditCases) results.push(await runAuditCase(gpu, c));
  console.log(formatAuditTable(results));
  const failed = results.filter((r) => !r.pass);
  assert.equal(failed.length, 0, `failed: ${failed.map((r) => `${r.label} (rel L2 ${r.relL2})`).join("; ")}`);
});

Deno.test("attention: other tile configurations (wide key blocks, several load rounds, split output columns) agree", async () => {
  const gpu = await getGpu();
  const configs = [
    { blockQ: 32, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 8, maxDv: 128 },
    { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 16, maxDv: 128 },
    { blockQ: 128, rowsPerThread: 4, threadsPerRow: 8, keysPerThread: 8, dStep: 4, keyStep: 4, maxDv: 128 },
    { blockQ: 16, rowsPerThread: 4, threadsPerRow: 4, keysPerThread: 4, dStep: 32, keyStep: 16, maxDv: 32 },
    { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 8, dStep: 4, keyStep: 4, maxDv: 128 },
    { blockQ: 16, rowsPerThread: 8, threadsPerRow: 8, keysPerThread: 8, dStep: 8, keyStep: 8, maxDv: 64 },
    // p shares rows with the q/k stages: placed past stage 0 (dStep 32), two keys per row (key block 128 > blockQ 64).
    { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 32, keyStep: 16, maxDv: 128 },
    { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 8, dStep: 16, keyStep: 8, maxDv: 128 },
    { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 8, keyStep: 16, maxDv: 128 },
    { blockQ: 32, rowsPerThread: 4, threadsPerRow: 8, keysPerThread: 4, dStep: 16, keyStep: 32, maxDv: 128 },
  ];
  const results = [];
  for (const config of configs) {
    results.push(
      await runAuditCase(
        gpu,
        attentionCase({
          label: `D128 H2 S131 causal ${JSON.stringify(config)}`,
          sq: 131,
          sk: 131,
          heads: 2,
          kvHeads: 1,
          headDim: 128,
          causal: true,
          config,
        }),
      ),
    );
  }
  console.log(formatAuditTable(results));
  for (const r of results) assert.ok(r.pass, `${r.label}: rel L2 ${r.relL2}`);
});

Deno.test("attention: the rendered shader indexes no private array and no vector by a runtime value", async () => {
  // Private arrays indexed in loops would be kept in local memory by the driver; every index must name shared or
  // storage memory, and vector components must be constant (.x .. .w).
  const indexed = new Set(["qkp", "v_tile", "red", "q", "k", "v", "queryBits", "keyBits", "out"]);
  const configs = [
    ...ATTENTION_SWEEP_CONFIGS.map((config) => ({ config, headDim: 128 })),
    { config: defaultAttentionConfig(16), headDim: 16 },
    { config: defaultAttentionConfig(12), headDim: 12 },
    { config: defaultAttentionConfig(512), headDim: 512 },
    { config: { blockQ: 16, rowsPerThread: 4, threadsPerRow: 4, keysPerThread: 4, dStep: 32, keyStep: 16, maxDv: 32 }, headDim: 128 },
  ];
  for (const { config, headDim } of configs) {
    const g = new Graph();
    const cols = 2 * headDim;
    const q = g.input("q", [40, cols]), k = g.input("k", [40, cols]), v = g.input("v", [40, cols]);
    attention(g, "attn", { q, k, v, heads: 2, kvHeads: 2, headDim, config });
    setAttentionGroupMask(g, "attn", { queryBits: g.input("qb", [40], "u32"), keyBits: g.input("kb", [40], "u32") });
    const code = await renderKernel(g.nodes[0].kernel, g.nodes[0].variant);
    const where = `${JSON.stringify(config)} D${headDim}`;
    assert.ok(!code.includes("{{"), `${where}: unsubstituted placeholder`);
    assert.match(code, /const GROUP_MASK: bool = true;/, where);
    for (const line of code.split("\n")) {
      if (line.includes("array<")) assert.match(line, /^(var<workgroup>|@group\(0\))/, `${where}: private array in ${line.trim()}`);
      // Nested tiles are indexed in a chain (qkp[n][h][w]): only the head of a chain names the memory.
      for (const m of line.matchAll(/(\w*)\s*\[/g)) {
        if (line.startsWith("@group(0)") || (m[1] === "" && line[m.index! - 1] === "]")) continue;
        assert.ok(indexed.has(m[1]), `${where}: '${m[1]}[' indexes private memory in ${line.trim()}`);
      }
    }
  }
});

Deno.test("attention: a query row with no visible key is written as zeros, the others are exact", async () => {
  const gpu = await getGpu();
  const [sq, sk, heads, d] = [37, 41, 2, 32];
  const rng = new Rng(3);
  const q = rng.normalArray(sq * heads * d), k = rng.normalArray(sk * heads * d), v = rng.normalArray(sk * heads * d);
  // Rule 0: queries 5..9 may not read any key; rule 1: queries 20..29 may not read keys 0..19.
  const bits = groupMaskBits(sq, sk, [{ queries: range(5, 10), keys: range(0, sk) }, { queries: range(20, 30), keys: range(0, 20) }]);
  assert.deepEqual(fullyMaskedQueries(sq, sk, { bits }), [5, 6, 7, 8, 9]);
  const g = new Graph();
  const out = g.state("out", [sq, heads * d]);
  attention(g, "attn", {
    q: g.input("q", [sq, heads * d]),
    k: g.input("k", [sk, heads * d]),
    v: g.input("v", [sk, heads * d]),
    heads,
    kvHeads: heads,
    headDim: d,
    groupMask: { queryBits: g.input("qb", [sq], "u32"), keyBits: g.input("kb", [sk], "u32") },
    out,
  });
  const plan = await Plan.compile(gpu, g, null);
  try {
    plan.write("q", q);
    plan.write("k", k);
    plan.write("v", v);
    plan.write("qb", bits.queryBits);
    plan.write("kb", bits.keyBits);
    plan.write("out", new Float32Array(sq * heads * d).fill(NaN));
    await plan.run();
    const got = await plan.read("out");
    const want = attentionReference(q, k, v, { sq, sk, heads, kvHeads: heads, headDim: d, bits });
    for (let i = 0; i < got.length; i++) {
      const row = Math.floor(i / (heads * d));
      if (row >= 5 && row < 10) assert.equal(got[i], 0, `row ${row} must be zeros`);
      else assert.ok(Math.abs(got[i] - want[i]) < 1e-5, `element ${i} (row ${row}): ${got[i]} vs ${want[i]}`);
    }
  } finally {
    plan.destroy();
  }
});

Deno.test("attention: a group mask attached to an existing node changes its variant and bindings", () => {
  const g = new Graph();
  const q = g.input("q", [10, 64]), k = g.input("k", [12, 64]), v = g.input("v", [12, 64]);
  attention(g, "block.attn", { q, k, v, heads: 1, kvHeads: 1, headDim: 64 });
  assert.equal(g.nodes[0].variant.GROUP_MASK, false);
  const qb = g.input("qb", [10], "u32"), kb = g.input("kb", [12], "u32");
  setAttentionGroupMask(g, "block.attn", { queryBits: qb, keyBits: kb });
  assert.equal(g.nodes[0].variant.GROUP_MASK, true);
  assert.equal(g.nodes[0].bindings.queryBits, qb);
  assert.equal(g.nodes[0].bindings.keyBits, kb);
  assert.throws(() => setAttentionGroupMask(g, "block.attn", { queryBits: kb, keyBits: qb }), /queryBits kb must be u32 with 10 elements/);
  assert.throws(() => setAttentionGroupMask(g, "nope", { queryBits: qb, keyBits: kb }), /no node named nope/);
});

Deno.test("attention: shapes and arguments are checked when the graph is built", () => {
  const g = new Graph();
  const q = g.input("q", [10, 256]), k = g.input("k", [12, 128]), v = g.input("v", [12, 128]);
  assert.throws(
    () => attention(g, "a1", { q, k, v, heads: 2, kvHeads: 1, headDim: 64 }),
    /a1: q q \[10×256\] must have heads·headDim = 2·64 = 128 columns/,
  );
  assert.throws(
    () => attention(g, "a2", { q, k, v, heads: 4, kvHeads: 3, headDim: 64 }),
    /a2: heads \(4\) must be a multiple of kvHeads \(3\)/,
  );
  assert.throws(
    () => attention(g, "a3", { q, k, v, heads: 2, kvHeads: 2, headDim: 128 }),
    /a3: k k \[12×128\] must have kvHeads·headDim = 2·128 = 256 columns/,
  );
  assert.throws(
    () => attention(g, "a4", { q, k, v: g.input("v2", [11, 128]), heads: 2, kvHeads: 1, headDim: 128 }),
    /a4: v v2 \[11×128\] must match k/,
  );
  assert.throws(
    () => attention(g, "a5", { q, k, v, heads: 2, kvHeads: 1, headDim: 128, keyLength: 13 }),
    /a5: keyLength must be an integer in \[1, 12\]/,
  );
  assert.throws(
    () => attention(g, "a6", { q, k, v, heads: 2, kvHeads: 1, headDim: 128, out: g.state("o", [10, 128]) }),
    /a6: out o must be f32 \[10×256\]/,
  );
  assert.throws(
    () =>
      attention(g, "a7", {
        q,
        k,
        v,
        heads: 2,
        kvHeads: 1,
        headDim: 128,
        groupMask: { queryBits: g.input("qb", [10], "u32"), keyBits: g.input("kb", [10], "u32") },
      }),
    /a7: group mask keyBits kb must be u32 with 12 elements/,
  );
  assert.throws(
    () => attention(g, "a8", { q: g.input("q3", [10, 2, 128]), k, v, heads: 2, kvHeads: 1, headDim: 128 }),
    /a8: q3 must be 2-D/,
  );
  assert.throws(
    () =>
      attention(g, "a9", {
        q,
        k,
        v,
        heads: 2,
        kvHeads: 1,
        headDim: 128,
        config: { blockQ: 128, rowsPerThread: 4, threadsPerRow: 16, keysPerThread: 4, dStep: 8, keyStep: 8, maxDv: 128 },
      }),
    /a9: .*512 threads/,
  );
  assert.throws(
    () =>
      attention(g, "a10", {
        q: g.input("q6", [10, 12]),
        k: g.input("k6", [12, 6]),
        v: g.input("v6", [12, 6]),
        heads: 2,
        kvHeads: 1,
        headDim: 6,
      }),
    /a10: head dim must be a positive multiple of 4/,
  );
  const config8 = (blockQ: number, threadsPerRow: number) => ({
    blockQ,
    rowsPerThread: 8,
    threadsPerRow,
    keysPerThread: 4,
    dStep: 32,
    keyStep: 16,
    maxDv: 128,
  });
  assert.throws(
    () => attention(g, "a11", { q, k, v, heads: 2, kvHeads: 1, headDim: 128, config: config8(12, 8) }),
    /a11: .*blockQ must be a multiple of rowsPerThread \(8\)/,
  );
  assert.throws(
    () => attention(g, "a12", { q, k, v, heads: 2, kvHeads: 1, headDim: 128, config: config8(64, 4) }),
    /a12: .*256 output accumulators per thread exceed 128/,
  );
  assert.equal(g.nodes.length, 0);
  attention(g, "ok", { q, k, v, heads: 2, kvHeads: 1, headDim: 128, causal: true });
  assert.equal(g.nodes[0].flops, (4 * 10 * 12 * 128 * 2) / 2);
  assert.deepEqual(g.nodes[0].workgroups, [1, 2, 1]);
});

Deno.test("attention: fullyMaskedQueries follows causal, keyLength and rules", () => {
  assert.deepEqual(fullyMaskedQueries(8, 8, {}), []);
  assert.deepEqual(fullyMaskedQueries(8, 8, { causal: true }), []);
  // Query i sees keys 0..i; a rule hiding keys 0..2 from queries 0..4 leaves queries 0..2 blind.
  assert.deepEqual(fullyMaskedQueries(8, 8, { causal: true, rules: [{ queries: range(0, 5), keys: range(0, 3) }] }), [0, 1, 2]);
  // Right padding: only keys 0..3 exist; hiding them all from queries 6, 7 leaves exactly those blind.
  assert.deepEqual(fullyMaskedQueries(8, 10, { keyLength: 4, rules: [{ queries: [6, 7], keys: range(0, 4) }] }), [6, 7]);
  // Two rules that together cover every key for query 1, while each alone does not.
  const rules = [{ queries: [1, 2], keys: [0, 1, 2] }, { queries: [1, 3], keys: [3, 4, 5] }];
  assert.deepEqual(fullyMaskedQueries(4, 6, { rules }), [1]);
  // The knockout layout "ref->text" never blinds anyone (text still sees text).
  const text = range(0, 512), ref = range(6656, 8704);
  assert.deepEqual(fullyMaskedQueries(8704, 8704, { rules: [{ queries: text, keys: ref }] }), []);
  // Agreement with a direct O(S²) scan on random rules.
  const rng = new Rng(11);
  for (let trial = 0; trial < 20; trial++) {
    const sq = 1 + rng.int(40), sk = 1 + rng.int(40);
    const randomRules = Array.from({ length: 1 + rng.int(5) }, () => ({
      queries: range(0, sq).filter(() => rng.uniform() < 0.5),
      keys: range(0, sk).filter(() => rng.uniform() < 0.7),
    }));
    const causal = rng.uniform() < 0.5, keyLength = 1 + rng.int(sk);
    const bits = groupMaskBits(sq, sk, randomRules);
    const direct = range(0, sq).filter((i) => {
      for (let j = 0; j < keyLength; j++) if ((!causal || j <= i) && (bits.queryBits[i] & bits.keyBits[j]) === 0) return false;
      return true;
    });
    assert.deepEqual(fullyMaskedQueries(sq, sk, { causal, keyLength, rules: randomRules }), direct, `trial ${trial}`);
  }
});

Deno.test("attention: groupMaskBits sets one bit per rule and refuses more than 32 rules or bad indices", () => {
  const bits = groupMaskBits(4, 5, [{ queries: [0, 1], keys: [4] }, { queries: [1], keys: [0, 4] }]);
  assert.deepEqual([...bits.queryBits], [1, 3, 0, 0]);
  assert.deepEqual([...bits.keyBits], [2, 0, 0, 0, 3]);
  const many = Array.from({ length: 32 }, (_, r) => ({ queries: [r % 4], keys: [r % 5] }));
  assert.equal(groupMaskBits(4, 5, many).queryBits[3], 0x88888888);
  assert.throws(() => groupMaskBits(4, 5, [...many, { queries: [0], keys: [0] }]), /33 rules given, at most 32/);
  assert.throws(() => groupMaskBits(4, 5, [{ queries: [4], keys: [0] }]), /rule 0: queries index 4 is outside \[0, 4\)/);
});

Deno.test("attention: configurations — defaults fit 32 KiB, tuned entries are used only where they fit", () => {
  for (const d of [16, 32, 64, 128, 256, 512, 80, 12]) {
    const tiles = attentionTiles(defaultAttentionConfig(d), d);
    assert.ok(attentionWorkgroupBytes(defaultAttentionConfig(d), d) <= 32768, `head dim ${d}`);
    assert.ok(tiles.threads <= 256);
    assert.equal(d % tiles.dv, 0);
  }
  assert.equal(attentionTiles(defaultAttentionConfig(512), 512).dv, 128);
  const limits = { maxComputeWorkgroupStorageSize: 32768, maxComputeInvocationsPerWorkgroup: 256, maxStorageBufferBindingSize: 1 << 30 };
  const small = { blockQ: 32, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 8, maxDv: 128 };
  const big = { blockQ: 128, rowsPerThread: 4, threadsPerRow: 8, keysPerThread: 8, dStep: 4, keyStep: 4, maxDv: 128 };
  const device = describeAdapter({ description: "test adapter", vendor: "0x1234" }, limits);
  device.tiles = { attention: { "128": small, "64": big } };
  assert.deepEqual(attentionConfigFor(device, 128), small);
  assert.deepEqual(attentionConfigFor(device, 64), defaultAttentionConfig(64), "a 40 KiB entry does not fit 32 KiB");
  assert.deepEqual(attentionConfigFor(device, 32), defaultAttentionConfig(32));
  const g = new Graph();
  attention(g, "attn", {
    q: g.input("q", [50, 128]),
    k: g.input("k", [50, 128]),
    v: g.input("v", [50, 128]),
    heads: 1,
    kvHeads: 1,
    headDim: 128,
  });
  assert.equal(g.nodes[0].variant.BQ, 64, "before compilation the node holds the default");
  g.chooseTiles(device);
  assert.equal(g.nodes[0].variant.BQ, 32);
  assert.deepEqual(g.nodes[0].workgroups, [2, 1, 1]);
  // The H100 winners serve every NVIDIA datacenter part (an H200 among them); a software adapter gets the small tiles.
  const h200 = describeAdapter({ description: "NVIDIA H200", vendor: "4318" }, { ...limits, maxComputeWorkgroupStorageSize: 49152 });
  assert.deepEqual(attentionConfigFor(h200, 128), BUILTIN_ATTENTION_TILES["nvidia-datacenter"]["128"]);
  const cpu = describeAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)", vendor: "65541" }, limits);
  assert.deepEqual(attentionConfigFor(cpu, 128), softwareAttentionConfig(128));
  assert.deepEqual(attentionConfigFor(describeAdapter({ description: "other adapter" }, limits), 128), defaultAttentionConfig(128));
  for (const d of [16, 32, 64, 128, 256, 512, 80, 12]) attentionTiles(softwareAttentionConfig(d), d);
  const path = Deno.makeTempFileSync({ suffix: ".json" });
  try {
    Deno.writeTextFileSync(path, JSON.stringify({ "nvidia": { "128": { ...small, keyStep: 24 } } }));
    assert.throws(
      () => loadAttentionTuning(new URL(`file://${path}`)),
      /\[nvidia\]\[128\].*keyStep must divide the key block of 64/,
    );
    assert.deepEqual(loadAttentionTuning(new URL("file:///nonexistent/attention_tuned.json")), {});
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("attention: configuration names round-trip, warps (warpCols) included, and bad warps are refused", () => {
  for (const config of [...ATTENTION_SWEEP_CONFIGS, softwareAttentionConfig(128), softwareAttentionConfig(12)]) {
    assert.deepEqual(parseAttentionConfigName(attentionConfigName(config)), config);
  }
  assert.equal(attentionConfigName({ ...softwareAttentionConfig(128), warpCols: 4 }), "q64r8.t8k8.ds16.ks8.dv128.w4");
  assert.throws(() => parseAttentionConfigName("q64r8.t8k8"), /is not qBQrTR/);
  // 16 row groups of 8 threads: warps 4 wide span 8 row groups; 16 wide do not fit 8 threads along a row.
  attentionTiles({ ...softwareAttentionConfig(128), blockQ: 128, warpCols: 4 }, 128);
  assert.throws(() => attentionTiles({ ...softwareAttentionConfig(128), warpCols: 16 }, 128, "a"), /a: .*warpCols must be a power of two/);
});

Deno.test("attention: the default and software tiles match the float64 reference (whichever this adapter picks)", async () => {
  const gpu = await getGpu();
  const results = [];
  for (const headDim of [128, 16, 512]) {
    for (const config of [defaultAttentionConfig(headDim), softwareAttentionConfig(headDim)]) {
      const label = `D${headDim} H2 S75 ${attentionConfigName(config)}`;
      results.push(await runAuditCase(gpu, attentionCase({ label, sq: 75, sk: 75, heads: 2, kvHeads: 2, headDim, config })));
    }
  }
  console.log(formatAuditTable(results));
  for (const r of results) assert.ok(r.pass, `${r.label}: rel L2 ${r.relL2}`);
});
