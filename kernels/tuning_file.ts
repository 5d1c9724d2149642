// Tile tables: {device class or adapter: {key: configuration}}, where the key is a shape class (matmul) or a head
// dimension (attention). The built-in tables (kernels/*_tuned.json) are keyed by device class; the benchmark
// sweeps write the same layout.

export type TuningTable<T> = Record<string, Record<string, T>>;

const isMap = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Check a parsed table; `check(config, key, where)` throws on an invalid configuration. */
export function checkTuningTable<T>(
  parsed: unknown,
  where: string,
  keyName: string,
  check: (config: T, key: string, where: string) => void,
): TuningTable<T> {
  if (!isMap(parsed)) throw new Error(`${where}: expected {device: {${keyName}: configuration}}`);
  for (const [device, entries] of Object.entries(parsed)) {
    if (!isMap(entries)) throw new Error(`${where} [${device}]: expected {${keyName}: configuration}`);
    for (const [key, config] of Object.entries(entries)) check(config as T, key, `${where} [${device}][${key}]`);
  }
  return parsed as TuningTable<T>;
}

/** Read and check a table file; a missing file means an empty table. */
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
  return checkTuningTable(parsed, file.pathname, keyName, check);
}
