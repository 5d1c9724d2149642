// The study's results tables: rows = interventions, columns = task families, cells p +Δ/−Δ from Wilson intervals,
// "keep" questions already inverted in the verdicts; rows split by question when a cell would mix two; exclusions
// counted; CSV (quoted where needed) and LaTeX (escaped, booktabs) exports.

import assert from "node:assert/strict";
import { formatCell, paperTable, tableCellsCsv, tableCsv, tableLatex, texEscape } from "../../experiments/tables.ts";
import { type VerdictLike, wilsonInterval } from "../../experiments/stats.ts";

function v(task: string, condition: string, family: string, template: string, answer: "yes" | "no" | null, keep = false): VerdictLike {
  return { task_id: task, condition, family, template, answer, pass: answer === null ? null : (answer === "yes") !== keep };
}

Deno.test("paper table: rows, columns, cells p +Δ/−Δ, keep questions inverted, split rows, exclusions", () => {
  const verdicts: VerdictLike[] = [];
  // ko_ref_text on colour: 3 of 4 lost the colour; one unparseable.
  for (const [i, a] of (["yes", "yes", "yes", "no", null] as const).entries()) {
    verdicts.push(v(`c${i}`, "ko_ref_text", "color", "color.knockout_lost", a));
  }
  // ko_ref_image on colour asks "still there?" (keep): 1 of 4 still there → 3 passes.
  for (const [i, a] of (["yes", "no", "no", "no"] as const).entries()) {
    verdicts.push(v(`c${i}`, "ko_ref_image", "color", "color.knockout_kept", a, true));
  }
  // style family: ko_ref_text with two questions → the row splits.
  verdicts.push(v("s0", "ko_ref_text", "style", "style.knockout_lost", "yes"), v("s0", "ko_ref_text", "style", "mine.q", "no"));
  // A sweep point, left out.
  verdicts.push(v("c0", "ko@suffix:3", "color", "color.knockout_lost", "yes"));
  const t = paperTable("judge-a", verdicts, {
    conditions: ["baseline", "ko_ref_image", "ko_ref_text"],
    families: ["style", "color"],
    skip: new Set(["ko@suffix:3"]),
  });
  assert.deepEqual(t.columns, ["style", "color"]);
  assert.deepEqual(t.rows.map((r) => r.label), [
    "ko_ref_image",
    "ko_ref_text · color.knockout_lost",
    "ko_ref_text · style.knockout_lost",
    "ko_ref_text · mine.q",
  ]);
  assert.equal(t.excluded, 1);
  const kept = t.rows[0].cells[1]!;
  assert.deepEqual([kept.n, kept.passes, kept.rate], [4, 3, 0.75]);
  assert.equal(t.rows[0].cells[0], undefined);
  const w = wilsonInterval(3, 4);
  assert.equal(formatCell(kept), `0.75 +${(w.high - 0.75).toFixed(2)}/−${(0.75 - w.low).toFixed(2)}`);
  assert.equal(formatCell(kept), "0.75 +0.20/−0.45");
  assert.equal(formatCell(undefined), "–");
  assert.equal(formatCell({ ...kept, n: 0, passes: 0, rate: NaN, low: 0, high: 1 }), "–");
  // Without question clashes the condition is one row across families.
  const simple = paperTable("j", verdicts.filter((x) => x.template !== "mine.q"));
  assert.deepEqual(simple.rows.map((r) => r.label), ["ko_ref_text", "ko_ref_image", "ko@suffix:3"]);
  assert.deepEqual(simple.columns, ["color", "style"]);
  assert.deepEqual(simple.rows[0].cells.map((c) => c?.template), ["color.knockout_lost", "style.knockout_lost"]);

  const csv = tableCsv(simple).trim().split("\n");
  assert.equal(csv[0], "intervention,color,color n,style,style n");
  assert.equal(csv[1], `ko_ref_text,${formatCell(simple.rows[0].cells[0])},4,${formatCell(simple.rows[0].cells[1])},1`);
  assert.equal(csv[2], `ko_ref_image,0.75 +0.20/−0.45,4,–,0`);
  const cells = tableCellsCsv(simple).trim().split("\n");
  assert.equal(cells[0], "judge,condition,template,family,n,passes,excluded,rate,low,high");
  assert.equal(
    cells[1],
    `j,ko_ref_text,color.knockout_lost,color,4,3,1,0.750000,${wilsonInterval(3, 4).low.toFixed(6)},${wilsonInterval(3, 4).high.toFixed(6)}`,
  );
  // A field with a comma or quote is quoted.
  const odd = paperTable('a,"b"', [v("x", 'cond,"1"', "fam", "t", "yes")]);
  assert.equal(tableCsv(odd).split("\n")[1].startsWith('"cond,""1""",'), true);

  const tex = tableLatex(simple);
  assert.match(tex, /\\begin\{tabular\}\{lcc\}/);
  assert.match(tex, /Intervention & color & style \\\\/);
  assert.match(tex, /ko\\_ref\\_image & \$0\.75\^\{\+0\.20\}_\{-0\.45\}\$ & -- \\\\/);
  assert.match(tex, /\\bottomrule\n\\end\{tabular\}\n$/);
  assert.equal(
    texEscape("a_b & 50% {x} #1 $ ~ ^ \\"),
    "a\\_b \\& 50\\% \\{x\\} \\#1 \\$ \\textasciitilde{} \\textasciicircum{} \\textbackslash{}",
  );
});
