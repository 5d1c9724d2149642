// A pass-rate-versus-block plot as standalone SVG text (no library, no script): x = the block index L of a sweep
// (0 … lMax, 31 on klein 9B), y = the pass rate 0 … 1; one line per setting with its 95% Wilson band shaded.
// Points without verdicts (n = 0) break the line and the band. Every point carries a <title> (hover text) and data-
// attributes, so the page and its tests can read the numbers back.

export interface PlotPoint {
  L: number;
  rate: number;
  low: number;
  high: number;
  n: number;
}

export interface PlotSeries {
  label: string;
  points: PlotPoint[];
}

export interface PlotOptions {
  title?: string;
  /** Last block on the axis (default: 31, or the largest L plotted if more). */
  lMax?: number;
  width?: number;
  height?: number;
}

/** Colour-blind-safe palette (Okabe–Ito), then repeated. */
export const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
const num = (v: number) => Number(v.toFixed(2)).toString();

/** Runs of consecutive points that have verdicts. */
function segments(points: PlotPoint[]): PlotPoint[][] {
  const out: PlotPoint[][] = [];
  let run: PlotPoint[] = [];
  for (const p of points) {
    if (p.n > 0 && Number.isFinite(p.rate)) run.push(p);
    else if (run.length) out.push(run), run = [];
  }
  if (run.length) out.push(run);
  return out;
}

export function rateVsBlockSvg(series: PlotSeries[], options: PlotOptions = {}): string {
  const width = options.width ?? 640, height = options.height ?? 300;
  const lMax = Math.max(options.lMax ?? 31, ...series.flatMap((s) => s.points.map((p) => p.L)), 1);
  const m = { left: 48, right: 16, top: options.title ? 28 : 12, bottom: 40 + 16 * Math.ceil(series.length / 3) };
  const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
  const x = (L: number) => m.left + (L / lMax) * pw;
  const y = (r: number) => m.top + (1 - r) * ph;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="sweep-plot" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `role="img" aria-label="${esc(options.title ?? "pass rate by block")}" font-family="system-ui,sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>`,
  ];
  if (options.title) parts.push(`<text x="${m.left}" y="16" font-size="13" font-weight="600">${esc(options.title)}</text>`);
  // Grid and axes.
  for (const r of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${num(y(r))}" y2="${num(y(r))}" stroke="${r === 0 ? "#333" : "#e3e3e3"}"/>`);
    parts.push(`<text x="${m.left - 6}" y="${num(y(r) + 4)}" text-anchor="end">${r.toFixed(2)}</text>`);
  }
  const step = lMax > 40 ? 8 : 4;
  for (let L = 0; L <= lMax; L += step) {
    parts.push(`<line x1="${num(x(L))}" x2="${num(x(L))}" y1="${m.top + ph}" y2="${m.top + ph + 4}" stroke="#333"/>`);
    parts.push(`<text x="${num(x(L))}" y="${m.top + ph + 16}" text-anchor="middle">${L}</text>`);
  }
  parts.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${m.top + ph + 30}" text-anchor="middle">block L</text>`);
  parts.push(`<text transform="translate(12 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">pass rate</text>`);
  series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    parts.push(`<g class="series" data-label="${esc(s.label)}">`);
    for (const seg of segments(s.points)) {
      const band = [
        ...seg.map((p) => `${num(x(p.L))},${num(y(p.high))}`),
        ...[...seg].reverse().map((p) => `${num(x(p.L))},${num(y(p.low))}`),
      ];
      parts.push(`<polygon class="band" points="${band.join(" ")}" fill="${colour}" fill-opacity="0.18" stroke="none"/>`);
      if (seg.length > 1) {
        parts.push(
          `<polyline class="line" points="${
            seg.map((p) => `${num(x(p.L))},${num(y(p.rate))}`).join(" ")
          }" fill="none" stroke="${colour}" stroke-width="2"/>`,
        );
      }
      for (const p of seg) {
        parts.push(
          `<circle cx="${num(x(p.L))}" cy="${
            num(y(p.rate))
          }" r="3" fill="${colour}" data-l="${p.L}" data-rate="${p.rate}" data-low="${p.low}" ` +
            `data-high="${p.high}" data-n="${p.n}"><title>${esc(s.label)}, L = ${p.L}: ${p.rate.toFixed(2)} ` +
            `(95% ${p.low.toFixed(2)}–${p.high.toFixed(2)}), n = ${p.n}</title></circle>`,
        );
      }
    }
    parts.push("</g>");
    // Legend, three entries a row, under the axis label.
    const lx = m.left + (i % 3) * (pw / 3), ly = m.top + ph + 46 + 16 * Math.floor(i / 3);
    parts.push(`<rect x="${num(lx)}" y="${ly - 8}" width="14" height="8" fill="${colour}" fill-opacity="0.5" stroke="${colour}"/>`);
    parts.push(`<text x="${num(lx + 18)}" y="${ly}">${esc(s.label)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}
