// Headless Chromium for rendering test pages to PNG (Debian package `chromium`). Absent → tests skip with a message.

import { join } from "node:path";

export async function findChromium(): Promise<string | null> {
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    for (const dir of (Deno.env.get("PATH") ?? "/usr/bin").split(":")) {
      try {
        if ((await Deno.stat(join(dir, name))).isFile) return join(dir, name);
      } catch { /* not here */ }
    }
  }
  return null;
}

/** Render a local HTML file to a PNG screenshot (no network, fresh profile). */
export async function screenshot(chromium: string, page: string, png: string, size = "1280,1600"): Promise<void> {
  await headless(chromium, [`--screenshot=${png}`, `--window-size=${size}`, `file://${page}`]);
}

/** The DOM of a local page after its scripts ran (`fragment` is appended to the address, e.g. "#condition=x"). */
export async function dumpDom(chromium: string, page: string, fragment = ""): Promise<string> {
  return await headless(chromium, ["--dump-dom", `file://${page}${fragment}`]);
}

async function headless(chromium: string, extra: string[]): Promise<string> {
  const profile = await Deno.makeTempDir({ prefix: "ks-chromium-" });
  try {
    const out = await new Deno.Command(chromium, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${profile}`,
        ...extra,
      ],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(120_000),
    }).output();
    if (!out.success) throw new Error(`chromium failed (${out.code}): ${new TextDecoder().decode(out.stderr).slice(-2000)}`);
    return new TextDecoder().decode(out.stdout);
  } finally {
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}
