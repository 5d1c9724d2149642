import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { rowsAuditCases } from "../../kernels/reference/rows.ts";
import { Graph } from "../../runtime/graph.ts";
import { concatRows, copyCols, copyRows, gatherRows, scatterRows, sliceCols, sliceRows } from "../../kernels/rows.ts";

for (const c of rowsAuditCases) {
  Deno.test(`rows audit: ${c.kernel} ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.kernel} ${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("rows: widths that are multiples of 4 run on vec4, others on f32", () => {
  const g = new Graph();
  const x = g.input("x", [10, 3 * 128 + 2 * 96]);
  sliceCols(g, "q", x, 0, 128);
  sliceCols(g, "odd", x, 3, 128);
  concatRows(g, "cat", [g.input("a", [3, 37]), g.input("b", [4, 37])]);
  assert.deepEqual(g.nodes.map((n) => n.kernel.name), ["rows_block_vec4", "rows_block", "rows_block", "rows_block"]);
  assert.deepEqual(g.nodes.map((n) => n.name), ["q", "odd", "cat.0", "cat.1"]);
});

Deno.test("rows builders give the documented shapes", () => {
  const g = new Graph();
  const x = g.input("x", [12, 40]);
  assert.deepEqual(g.shape(sliceRows(g, "sr", x, 2, 5)), [5, 40]);
  assert.deepEqual(g.shape(sliceCols(g, "sc", x, 8, 24)), [12, 24]);
  assert.deepEqual(g.shape(concatRows(g, "cr", [x, g.input("y", [3, 40])])), [15, 40]);
  assert.deepEqual(g.shape(gatherRows(g, "gr", x, g.input("i", [7], "u32"))), [7, 40]);
  const dst = g.state("dst", [12, 100]);
  assert.equal(copyCols(g, "cc", x, dst, { dstCol: 60 }), dst);
});

Deno.test("rows builders refuse bad operands with the node name", () => {
  const g = new Graph();
  const x = g.input("x", [12, 40]);
  const dst = g.state("dst", [20, 40]);
  assert.throws(
    () => copyRows(g, "patch.3", x, dst, { srcRow: 10, dstRow: 0, rows: 5 }),
    /patch\.3: source rows 10\.\.14 is outside 0\.\.11/,
  );
  assert.throws(() => copyRows(g, "a", x, dst, { srcRow: 0, dstRow: 18, rows: 5 }), /a: destination rows 18\.\.22 is outside 0\.\.19/);
  assert.throws(
    () => copyRows(g, "b", x, g.state("narrow", [20, 39]), { srcRow: 0, dstRow: 0, rows: 1 }),
    /b: source has 40 columns but destination has 39/,
  );
  assert.throws(() => copyRows(g, "c", x, x, { srcRow: 0, dstRow: 6, rows: 6 }), /c: source x and destination x share memory/);
  assert.throws(() => concatRows(g, "d", [x, g.input("w", [2, 41])]), /d: part 1 has 41 columns, part 0 has 40/);
  assert.throws(() => concatRows(g, "e", []), /e: nothing to concatenate/);
  assert.throws(() => sliceCols(g, "double.0.q", x, 30, 20), /double\.0\.q: columns 30\.\.49 is outside 0\.\.39/);
  assert.throws(() => copyCols(g, "f", x, g.state("wide", [11, 100]), { dstCol: 0 }), /f: source has 12 rows but destination has 11/);
  assert.throws(
    () => copyCols(g, "g", x, g.state("wide2", [12, 100]), { dstCol: 61 }),
    /g: destination columns 61\.\.100 is outside 0\.\.99/,
  );
  const si = g.input("si", [3], "u32"), di = g.input("di", [4], "u32"), fi = g.input("fi", [3]);
  assert.throws(
    () => scatterRows(g, "h", x, dst, { srcIndex: si, dstIndex: di, mode: "replace" }),
    /h: 3 source indices but 4 destination indices/,
  );
  assert.throws(
    () => scatterRows(g, "i", x, dst, { srcIndex: si, dstIndex: fi, mode: "add" }),
    /i: destination index fi must be a u32 vector \[count\], got f32 \[3\]/,
  );
  assert.throws(
    () => scatterRows(g, "j", x, dst, { srcIndex: si, dstIndex: si, mode: "replace", alpha: 2 }),
    /j: alpha applies to the "add" mode only/,
  );
  const xb = g.input("xb", [12, 40], "bf16");
  assert.throws(() => sliceRows(g, "k", xb, 0, 2), /k: input xb must be f32, got bf16/);
  assert.throws(() => gatherRows(g, "l", g.input("x3", [2, 3, 4]), si), /l: source x3 must be a matrix \[rows, cols\], got \[2×3×4\]/);
});
