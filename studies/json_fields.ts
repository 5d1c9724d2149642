// Field-by-field reading of JSON documents (experiment specs, experiment files) with errors that name the field,
// e.g. `spec.interventions[1].blocks: expected …`. `path` arguments end with "." (or are empty at the root).

export class JsonFields {
  /** `root` prefixes every field path in messages ("spec", "experiment"). */
  constructor(private readonly root: string) {}

  fail(path: string, message: string): never {
    throw new Error(`${this.root}.${path}: ${message}`);
  }

  obj(v: unknown, path: string): Record<string, unknown> {
    if (!v || typeof v !== "object" || Array.isArray(v)) this.fail(path, `expected an object, got ${JSON.stringify(v)}`);
    return v as Record<string, unknown>;
  }

  /** Refuse fields outside `allowed` (`path` without the trailing dot; empty at the root). */
  only(o: Record<string, unknown>, path: string, allowed: string[]): void {
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) this.fail(path ? `${path}.${k}` : k, `unknown field (allowed: ${allowed.join(", ")})`);
    }
  }

  str(o: Record<string, unknown>, k: string, path: string, options: { required?: boolean; nonEmpty?: boolean } = {}): string | undefined {
    const v = o[k];
    if (v === undefined) {
      if (options.required) this.fail(`${path}${k}`, "is required");
      return undefined;
    }
    if (typeof v !== "string" || (options.nonEmpty && v === "")) {
      this.fail(`${path}${k}`, `expected a ${options.nonEmpty ? "non-empty " : ""}string, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  int(o: Record<string, unknown>, k: string, path: string, min: number): number | undefined {
    const v = o[k];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      this.fail(`${path}${k}`, `expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  num(o: Record<string, unknown>, k: string, path: string): number | undefined {
    const v = o[k];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) this.fail(`${path}${k}`, `expected a number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(o: Record<string, unknown>, k: string, path: string): boolean | undefined {
    const v = o[k];
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") this.fail(`${path}${k}`, `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  strList(o: Record<string, unknown>, k: string, path: string): string[] | undefined {
    const v = o[k];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) this.fail(`${path}${k}`, "expected a list of strings");
    return v as string[];
  }

  oneOf<T extends string>(o: Record<string, unknown>, k: string, path: string, values: readonly T[]): T | undefined {
    const v = o[k];
    if (v === undefined) return undefined;
    if (!values.includes(v as T)) {
      this.fail(`${path}${k}`, `expected one of ${values.map((x) => JSON.stringify(x)).join(", ")}, got ${JSON.stringify(v)}`);
    }
    return v as T;
  }
}
