// Latent layout changes between the VAE (channel-major [C, h·w]) and the transformer's packed tokens
// [(h/2)·(w/2), 4·C], with the per-feature batch-norm statistics of FLUX.2's VAE applied on the way.
// Feature order inside a token: f = c·4 + dy·2 + dx (the 2×2 patch of channel c at (2·py + dy, 2·px + dx)).
//   patchify:   out[t, f] = (x[c, (2py+dy)·w + 2px+dx] − mean[f]) / sqrt(var[f] + eps)
//   unpatchify: out[c, y·w + x] = tokens[t, f] · sqrt(var[f] + eps) + mean[f]   (t = (y/2)·(w/2) + x/2)
// BN = false skips the statistics. h and w are the unpatchified latent sizes (both even).
// mean/var are bf16 pairs in u32 words or f32 (STATS_BF16). One thread per output value.

const BN: bool = {{BN}};
const STATS_BF16: bool = {{STATS_BF16}};

fn widen(word: u32, i: u32) -> f32 {
  if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
  return bitcast<f32>(word & 0xffff0000u);
}

fn loadMean(i: u32) -> f32 {
  if (STATS_BF16) { return widen(mean[i >> 1u], i); }
  return bitcast<f32>(mean[i]);
}

fn loadVar(i: u32) -> f32 {
  if (STATS_BF16) { return widen(variance[i >> 1u], i); }
  return bitcast<f32>(variance[i]);
}

fn patchify(i: u32) {
  let features = 4u * params.channels;
  let t = i / features;
  let f = i - t * features;
  let hw2 = params.w / 2u;
  let py = t / hw2;
  let px = t - py * hw2;
  let c = f / 4u;
  let dy = (f / 2u) % 2u;
  let dx = f % 2u;
  var v = x[c * params.h * params.w + (2u * py + dy) * params.w + 2u * px + dx];
  if (BN) { v = (v - loadMean(f)) / sqrt(loadVar(f) + params.eps); }
  out[i] = v;
}

fn unpatchify(i: u32) {
  let plane = params.h * params.w;
  let c = i / plane;
  let r = i - c * plane;
  let y = r / params.w;
  let xx = r - y * params.w;
  let f = c * 4u + (y % 2u) * 2u + xx % 2u;
  let t = (y / 2u) * (params.w / 2u) + xx / 2u;
  var v = x[t * 4u * params.channels + f];
  if (BN) { v = v * sqrt(loadVar(f) + params.eps) + loadMean(f); }
  out[i] = v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count) { return; }
  {{OP}}(i);
}
