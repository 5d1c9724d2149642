// bench/sass.ts reads NVIDIA's shader cache and nvdisasm listings; these check its readers on synthetic cache files
// (the layout described there) and a hand-written listing, without a GPU.

import assert from "node:assert/strict";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { parseSass, pipelineCode, readShaderCache, summarizeSass } from "../../bench/sass.ts";

/** A pipeline entry: "NVDANVVM", a section table at 0x28 (type, size, offset from byte 8), code after it. */
function pipelineEntry(code: Uint8Array, codeOffset = 0x170): Uint8Array {
  const entry = new Uint8Array(codeOffset + 8 + code.length);
  entry.set(new TextEncoder().encode("NVDANVVM"));
  const view = new DataView(entry.buffer);
  view.setUint32(0x28, 3, true); // another section first, as the driver writes
  view.setUint32(0x2c, 8, true);
  view.setUint32(0x30, 0x160, true);
  view.setUint32(0x48, 1, true);
  view.setUint32(0x4c, code.length, true);
  view.setUint32(0x50, codeOffset, true);
  entry.set(code, codeOffset + 8);
  return entry;
}

function codeBytes(instructions: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: 16 * instructions }, (_, i) => (i * 31 + seed) & 0xff);
}

Deno.test("sass: a pipeline entry's code section is found through its table; other entries are not pipelines", () => {
  const code = codeBytes(5, 3);
  assert.deepEqual(pipelineCode(pipelineEntry(code), "e"), code);
  assert.deepEqual(pipelineCode(pipelineEntry(code, 0x200), "e"), code);
  assert.equal(pipelineCode(new TextEncoder().encode("\x7fELF and something else entirely, long enough to look at."), "e"), null);
  const truncated = pipelineEntry(code).subarray(0, 0x170 + 8 + 40);
  assert.throws(() => pipelineCode(truncated, "cache.bin frame 2"), /cache\.bin frame 2: code section of 80 bytes at 376 does not fit/);
  const noCode = pipelineEntry(code);
  new DataView(noCode.buffer).setUint32(0x48, 7, true);
  assert.throws(() => pipelineCode(noCode, "f"), /f: a pipeline entry without a code section/);
});

Deno.test("sass: every pipeline of a cache folder is read out of its zstd frames, framing bytes between them", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const a = codeBytes(7, 1), b = codeBytes(3, 9);
    const other = new TextEncoder().encode("host stub, not a pipeline: ".repeat(4));
    const frames = [pipelineEntry(a), other, pipelineEntry(b)].map((e) => new Uint8Array(zstdCompressSync(e)));
    const parts: Uint8Array[] = [new TextEncoder().encode("CDVN\0\0\x03\0header")];
    for (const f of frames) parts.push(Uint8Array.of(0x67, 0x01, 0, 0), f);
    const file = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      file.set(p, at);
      at += p.length;
    }
    Deno.mkdirSync(join(dir, "GLCache", "x"), { recursive: true });
    Deno.writeFileSync(join(dir, "GLCache", "x", "cache.bin"), file);
    Deno.writeFileSync(join(dir, "GLCache", "x", "cache.toc"), frames[0]); // only *.bin files are read
    const found = readShaderCache(dir);
    assert.deepEqual(found.map((p) => p.code), [a, b]);
    assert.match(found[1].source, /cache\.bin frame 2$/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

const LISTING = `
\t.headerflags\t@"EF_CUDA_SM90"
        /*0000*/                   S2R R0, SR_TID.X ;                       /* 0x0000000000007919 */
        /*0010*/                   MOV R9, RZ ;                              /* 0x000000ff00097202 */
        /*0020*/                   LDS.128 R4, [R0+0x100] ;                  /* 0x0001000000047984 */
        /*0030*/                   FFMA.FTZ R9, R4.reuse, R5, R9 ;           /* 0x0000000504097223 */
        /*0040*/                   FFMA.FTZ R9, R4, R6, R9 ;                 /* 0x0000000604097223 */
        /*0050*/               @P0 LDG.E.128.CONSTANT R12, [R2.U32+UR6], !P4 ; /* 0x0000000602097981 */
        /*0060*/                   IADD3 R2, R2, 0x10, RZ ;                  /* 0x0000001002027810 */
        /*0070*/                   BAR.SYNC 0x0 ;                            /* 0x0000000000007b1d */
        /*0080*/              @!P1 BRA 0x20 ;                                /* 0xfffffff800007947 */
        /*0090*/                   STG.E [R2.64], R9 ;                       /* 0x0000000902007986 */
        /*00a0*/                   BRA 0xa0 ;                                /* 0xfffffffc00fc7947 */
`;

Deno.test("sass: a listing gives its instructions, registers and each loop's instruction mix", () => {
  const ins = parseSass(LISTING);
  assert.equal(ins.length, 11);
  assert.deepEqual(ins[5], { address: 0x50, opcode: "LDG.E.128.CONSTANT", registers: [12, 2] });
  assert.equal(ins[8].target, 0x20);
  const s = summarizeSass(ins);
  assert.equal(s.instructions, 11);
  assert.equal(s.registers, 13);
  // The backward branch at 0x80 closes the loop from 0x20; the branch to itself at 0xa0 is the end-of-code trap.
  assert.equal(s.loops.length, 1);
  assert.deepEqual(s.loops[0], {
    from: 0x20,
    to: 0x80,
    instructions: 7,
    counts: { other: 2, FFMA: 2, HFMA2: 0, LDS: 1, STS: 0, LDG: 1, STG: 0, BAR: 1, MUFU: 0 },
  });
});
