// `deno task inspect <path>`

export { inspectMain as main } from "../weights/inspect.ts";
