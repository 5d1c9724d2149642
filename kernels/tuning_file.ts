// Tuned tile configurations recorded by the benchmark sweeps: a JSON file {device description: {key: config}},
// where the key is a shape class (matmul) or a head dimension (attention). A missing file means none.

export type TuningTable<T> = Record<string, Record<string, T>>;

/** Read and check a tuning file; `check(config, key, where)` throws on an invalid configuration. */
export function readTuningFile<T>(file: URL, keyName: string, check: (config: T, key: string, where: string) => void): TuningTable<T> {
  if (file.protocol !== "file:") return {};
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    throw e;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file.pathname}: not valid JSON (${(e as Error).message})`);
  }
  const isMap = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isMap(parsed)) throw new Error(`${file.pathname}: expected {device description: {${keyName}: configuration}}`);
  const table = parsed as TuningTable<T>;
  for (const [device, entries] of Object.entries(table)) {
    if (!isMap(entries)) throw new Error(`${file.pathname} [${device}]: expected {${keyName}: configuration}`);
    for (const [key, config] of Object.entries(entries)) check(config, key, `${file.pathname} [${device}][${key}]`);
  }
  return table;
}
