// The published study's task sets that kleinscope builds itself.
//
// Solid colours: its 8 swatch colours × 8 objects × 5 replicates = 320 rows, exactly its task ids
// (solid_<colour>_<object>_s<i>), instructions ("draw a <object> in this color"), 1024² outputs, 1024² swatches of its
// RGB values and noise seeds crc32(task id). The other sets (style, real-photo style, DreamBench++ people, SUN397
// add/remove) are read from its published task files as they are (tasks.ts); SUN397 can be rebuilt from the images
// (sun397.ts), and any set can be paired (pairings.ts) or given longer prompts (padding_dose.ts).

import { type ColourTaskSet, DEFAULT_COLOUR_INSTRUCTION, DEFAULT_OBJECTS, NAMED_COLOURS, writeColourTasks } from "./generators.ts";
import { FAMILIES } from "./tasks.ts";

/** Replicates of every (colour, object): task ids end in _s0 … _s4. */
export const STUDY_REPLICATES = 5;
export const STUDY_SWATCH_SIZE = 1024;

/** The study's solid-colour task set in `out` (tasks.jsonl and swatches/solid_<colour>.png). */
export function writeStudyColourTasks(out: string): Promise<ColourTaskSet> {
  return writeColourTasks({
    out,
    colours: [...NAMED_COLOURS],
    objects: [...DEFAULT_OBJECTS],
    seeds: Array.from({ length: STUDY_REPLICATES }, (_, i) => i),
    width: 1024,
    height: 1024,
    swatchSize: STUDY_SWATCH_SIZE,
    instruction: DEFAULT_COLOUR_INSTRUCTION,
    idPrefix: "solid",
    noiseSeed: "crc32",
    editType: "customize",
    family: FAMILIES.solidColour,
    swatchPrefix: "solid_",
  });
}
