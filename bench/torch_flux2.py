#!/usr/bin/env python3
"""The FLUX.2 transformer forward in plain PyTorch (no diffusers), reading a diffusers-layout transformer folder: the
baseline that bench/dit.ts compares kleinscope with, on the same weights and inputs.

    python3 bench/torch_flux2.py --check-golden tests/fixtures/klein-tiny
    python3 bench/torch_flux2.py --model DIR --inputs in.safetensors --output out.safetensors --dtype fp32 --time --iters 5
    python3 bench/torch_flux2.py --model DIR --size 1024 --refs 1 --dtype bf16 --time

--model is a transformer folder (config.json + safetensors, sharded or not) or a pipeline folder holding transformer/.
--inputs holds x [image rows, in_channels], ctx [text rows, joint_attention_dim], ids [text + image rows, 4] (text rows
first) and timestep [1] = σ (the model's t is 1000·σ); without it, seeded random inputs for --size/--refs with 512
text rows are used. --output writes `output` [image rows, out_channels] as F32.
--dtype fp32 runs with TF32 off (CUDA cores); bf16 casts weights and activations to bfloat16 (tensor cores); fp64 is
for checks on the CPU. --time reports the median of --iters forwards timed with CUDA events (after --warmup ones).
--check-golden DIR runs the fixture's dit_forward case in float64 on the CPU and prints the relative L2 error of the
output against the reference (diffusers in float64); it validates this script.

The arithmetic follows diffusers' Flux2Transformer2DModel (and model/flux2/graph.ts, which is conformant):
timestep features in float32 from t = float32(1000·σ) (diffusers rounds σ to the model dtype first; with bf16 that
would move t by up to 0.5, so the float64 product is used in every mode), SiLU MLP; modulations chunked
(shift, scale, gate) ×2 for the double blocks, ×1 for the single blocks, (scale, shift) for norm_out; LayerNorm without
affine (eps from the config), RMSNorm on q/k per head, RoPE on 4 axes with interleaved pairs (angles in float64,
cos/sin rounded to float32, applied in float32 as diffusers' apply_rotary_emb does), F.scaled_dot_product_attention,
SwiGLU (silu of the first half times the second half).

Needs torch (and numpy, to write the output); safetensors files are read and written directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_random_checkpoint import safetensors_header, transformer_tensor_shapes  # noqa: E402

TEXT_ROWS = 512

# ---- safetensors ------------------------------------------------------------------------------------------------

TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32"}


def read_header(path: str) -> tuple[dict, int]:
    """The tensor entries of a safetensors file and the byte offset where its data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SystemExit(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class TensorFiles:
    """The tensors of a safetensors file, or of a folder with one file or with a `*.safetensors.index.json`."""

    def __init__(self, path: str):
        self.path = path
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            indexes = [n for n in names if n.endswith(".safetensors.index.json")]
            if len(indexes) > 1:
                raise SystemExit(f"{path}: several shard indexes ({', '.join(indexes)})")
            if indexes:
                with open(os.path.join(path, indexes[0])) as f:
                    weight_map = json.load(f)["weight_map"]
                files = sorted(set(weight_map.values()))
            else:
                files = [n for n in names if n.endswith(".safetensors")]
                if len(files) != 1:
                    raise SystemExit(f"{path}: expected one .safetensors file or an index, found {len(files)} files")
                weight_map = None
            files = [os.path.join(path, f) for f in files]
        else:
            files, weight_map = [path], None
        self.entries: dict[str, tuple[str, dict, int]] = {}
        for file in files:
            header, start = read_header(file)
            for name, entry in header.items():
                if weight_map is None or weight_map.get(name) == os.path.basename(file):
                    self.entries[name] = (file, entry, start)
        self.handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return self.entries[name][1]["shape"]

    def load(self, torch, name: str):
        """The tensor on the CPU, in its stored dtype."""
        file, entry, start = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype = getattr(torch, TORCH_DTYPE_NAMES[entry["dtype"]])
        if end == begin:
            return torch.empty(entry["shape"], dtype=dtype)
        f = self.handles.get(file)
        if f is None:
            f = self.handles[file] = open(file, "rb")
        f.seek(start + begin)
        buf = bytearray(end - begin)
        if f.readinto(buf) != len(buf):
            raise SystemExit(f"{file}: tensor {name} is cut short")
        return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])

    def close(self) -> None:
        for f in self.handles.values():
            f.close()
        self.handles.clear()


def write_f32_safetensors(torch, path: str, tensors: dict) -> None:
    """Write float32 copies of the given tensors (atomically)."""
    items = [(name, t.detach().to("cpu", torch.float32).contiguous()) for name, t in tensors.items()]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(safetensors_header([(name, "F32", list(t.shape)) for name, t in items]))
        for _, t in items:
            f.write(t.numpy().astype("<f4", copy=False).tobytes())
    os.replace(tmp, path)


# ---- model ------------------------------------------------------------------------------------------------------

def resolve_transformer_dir(path: str) -> str:
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return os.path.join(path, "transformer")
    return path


def load_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("patch_size", 1) != 1:
        raise SystemExit(f"{folder}/config.json: patch_size {cfg['patch_size']} is not supported (klein uses 1)")
    if cfg.get("guidance_embeds"):
        raise SystemExit(f"{folder}/config.json: guidance_embeds is true; klein has no guidance embedder")
    cfg.setdefault("attention_head_dim", 128)
    cfg.setdefault("axes_dims_rope", [32, 32, 32, 32])
    cfg.setdefault("eps", 1e-6)
    cfg.setdefault("mlp_ratio", 3.0)
    cfg.setdefault("rope_theta", 2000)
    cfg.setdefault("timestep_guidance_channels", 256)
    cfg["out_channels"] = cfg.get("out_channels") or cfg["in_channels"]
    return cfg


def load_weights(torch, folder: str, cfg: dict, device: str, dtype) -> dict:
    """Every tensor, checked against the configuration, moved to `device` and cast to `dtype` one at a time."""
    files = TensorFiles(folder)
    try:
        expected = dict(transformer_tensor_shapes(cfg))
        present = set(files.names())
        problems = [f"missing {n} {s}" for n, s in expected.items() if n not in present]
        problems += [f"{n} has shape {files.shape(n)}, expected {s}" for n, s in expected.items() if n in present and files.shape(n) != s]
        problems += [f"unexpected {n}" for n in sorted(present - set(expected))]
        if problems:
            raise SystemExit(f"{folder} does not match its config.json:\n  " + "\n  ".join(problems[:20]))
        weights = {}
        for name in expected:
            weights[name] = files.load(torch, name).to(device).to(dtype)
        return weights
    finally:
        files.close()


def timestep_features(torch, t, channels: int):
    """diffusers' get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0) of t [1] (float32): [1, channels]."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32, device=t.device)
    exponent = exponent / half
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)


def rope_tables(torch, ids, axes: list[int], theta: float):
    """diffusers' Flux2PosEmbed: for each axis, angles pos·θ^(−2j/d) in float64 from float32 positions, cos and sin
    each repeated for the two elements of a pair and rounded to float32. [S, sum(axes)] each."""
    pos = ids.float()
    cos_parts, sin_parts = [], []
    for i, d in enumerate(axes):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos.device)[: d // 2] / d))
        angles = torch.outer(pos[:, i].double(), freqs)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


class Flux2:
    """The forward pass over one sequence (no batch dimension): activations are [rows, features]."""

    def __init__(self, torch, cfg: dict, weights: dict):
        self.torch = torch
        self.F = torch.nn.functional
        self.cfg = cfg
        self.w = weights
        self.heads = cfg["num_attention_heads"]
        self.head_dim = cfg["attention_head_dim"]
        self.dim = self.heads * self.head_dim
        self.mlp = int(self.dim * cfg["mlp_ratio"])
        self.eps = cfg["eps"]
        self.has_sdpa = hasattr(self.F, "scaled_dot_product_attention")
        self.has_rms_norm = hasattr(self.F, "rms_norm")

    def linear(self, x, name: str):
        return self.F.linear(x, self.w[name])

    def layer_norm(self, x):
        return self.F.layer_norm(x, (x.shape[-1],), eps=self.eps)

    def rms_norm(self, x, name: str):
        """torch.nn.RMSNorm over the last dimension with weight `name`."""
        w = self.w[name]
        if self.has_rms_norm:
            return self.F.rms_norm(x, (x.shape[-1],), w, self.eps)
        # PyTorch before 2.4 has no rms_norm: the same arithmetic (in float32 at least).
        xf = x.float() if x.dtype in (self.torch.bfloat16, self.torch.float16) else x
        y = xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * w.to(y.dtype)).to(x.dtype)

    def split_heads(self, x):
        return x.unflatten(-1, (self.heads, self.head_dim))

    def rope(self, x, cos, sin):
        """diffusers' apply_rotary_emb (use_real, unbind dim −1) on x [S, heads, head_dim]: pairs (2p, 2p+1) rotated,
        computed in float32 and cast back."""
        x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
        x_rotated = self.torch.stack([-x_imag, x_real], dim=-1).flatten(-2)
        return (x.float() * cos[:, None, :] + x_rotated.float() * sin[:, None, :]).to(x.dtype)

    def attention(self, q, k, v):
        """Softmax attention over [S, heads, head_dim] (scale 1/√head_dim), returned as [S, heads·head_dim]."""
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, S, head_dim], as diffusers passes them
        if self.has_sdpa:
            out = self.F.scaled_dot_product_attention(q, k, v)
        else:  # PyTorch before 2.0
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
            out = scores.softmax(dim=-1) @ v
        return out[0].transpose(0, 1).reshape(q.shape[2], self.dim).to(q.dtype)

    def swiglu(self, x):
        a, b = x.chunk(2, dim=-1)
        return self.F.silu(a) * b

    def forward(self, x, ctx, cos, sin, t):
        """x [image rows, in_channels], ctx [text rows, joint_attention_dim] in the compute dtype; cos/sin [S, head_dim]
        float32 for the [text ; image] sequence; t [1] float32 (= 1000·σ). Returns [image rows, out_channels]."""
        torch, F, dt = self.torch, self.F, x.dtype
        text_rows = ctx.shape[0]
        tfeat = timestep_features(torch, t, self.cfg["timestep_guidance_channels"]).to(dt)
        temb = self.linear(F.silu(self.linear(tfeat, "time_guidance_embed.timestep_embedder.linear_1.weight")),
                           "time_guidance_embed.timestep_embedder.linear_2.weight")
        temb_act = F.silu(temb)
        mod_img = self.linear(temb_act, "double_stream_modulation_img.linear.weight").chunk(6, dim=-1)
        mod_txt = self.linear(temb_act, "double_stream_modulation_txt.linear.weight").chunk(6, dim=-1)
        mod_single = self.linear(temb_act, "single_stream_modulation.linear.weight").chunk(3, dim=-1)

        img = self.linear(x, "x_embedder.weight")
        txt = self.linear(ctx, "context_embedder.weight")

        for i in range(self.cfg["num_layers"]):
            b = f"transformer_blocks.{i}"
            shift, scale, gate, shift2, scale2, gate2 = mod_img
            c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = mod_txt
            n_img = (1 + scale) * self.layer_norm(img) + shift
            n_txt = (1 + c_scale) * self.layer_norm(txt) + c_shift
            q = self.rms_norm(self.split_heads(self.linear(n_img, f"{b}.attn.to_q.weight")), f"{b}.attn.norm_q.weight")
            k = self.rms_norm(self.split_heads(self.linear(n_img, f"{b}.attn.to_k.weight")), f"{b}.attn.norm_k.weight")
            v = self.split_heads(self.linear(n_img, f"{b}.attn.to_v.weight"))
            eq = self.rms_norm(self.split_heads(self.linear(n_txt, f"{b}.attn.add_q_proj.weight")), f"{b}.attn.norm_added_q.weight")
            ek = self.rms_norm(self.split_heads(self.linear(n_txt, f"{b}.attn.add_k_proj.weight")), f"{b}.attn.norm_added_k.weight")
            ev = self.split_heads(self.linear(n_txt, f"{b}.attn.add_v_proj.weight"))
            q = self.rope(torch.cat([eq, q], dim=0), cos, sin)
            k = self.rope(torch.cat([ek, k], dim=0), cos, sin)
            a = self.attention(q, k, torch.cat([ev, v], dim=0))
            a_txt, a_img = a[:text_rows], a[text_rows:]

            img = img + gate * self.linear(a_img, f"{b}.attn.to_out.0.weight")
            n_img = self.layer_norm(img) * (1 + scale2) + shift2
            ff = self.linear(self.swiglu(self.linear(n_img, f"{b}.ff.linear_in.weight")), f"{b}.ff.linear_out.weight")
            img = img + gate2 * ff

            txt = txt + c_gate * self.linear(a_txt, f"{b}.attn.to_add_out.weight")
            n_txt = self.layer_norm(txt) * (1 + c_scale2) + c_shift2
            ff = self.linear(self.swiglu(self.linear(n_txt, f"{b}.ff_context.linear_in.weight")), f"{b}.ff_context.linear_out.weight")
            txt = txt + c_gate2 * ff

        h = torch.cat([txt, img], dim=0)
        shift, scale, gate = mod_single
        for i in range(self.cfg["num_single_layers"]):
            b = f"single_transformer_blocks.{i}.attn"
            n = (1 + scale) * self.layer_norm(h) + shift
            qkv, mlp = torch.split(self.linear(n, f"{b}.to_qkv_mlp_proj.weight"), [3 * self.dim, 2 * self.mlp], dim=-1)
            q, k, v = qkv.chunk(3, dim=-1)
            q = self.rope(self.rms_norm(self.split_heads(q), f"{b}.norm_q.weight"), cos, sin)
            k = self.rope(self.rms_norm(self.split_heads(k), f"{b}.norm_k.weight"), cos, sin)
            a = self.attention(q, k, self.split_heads(v))
            h = h + gate * self.linear(torch.cat([a, self.swiglu(mlp)], dim=-1), f"{b}.to_out.weight")

        h = h[text_rows:]
        scale, shift = self.linear(temb_act, "norm_out.linear.weight").chunk(2, dim=-1)
        h = self.layer_norm(h) * (1 + scale) + shift
        return self.linear(h, "proj_out.weight")


# ---- inputs -----------------------------------------------------------------------------------------------------

def random_inputs(torch, cfg: dict, size: int, refs: int, seed: int):
    """Seeded random x, ctx and the FLUX.2 position ids of [512 text ; noise grid ; each reference grid], σ = 0.7."""
    if size % 16:
        raise SystemExit(f"--size {size} must be a multiple of 16")
    side = size // 16
    gen = torch.Generator().manual_seed(seed)
    grid = [(y, x) for y in range(side) for x in range(side)]
    image_rows = len(grid) * (1 + refs)
    ids = [[0, 0, 0, i] for i in range(TEXT_ROWS)]
    for k in range(1 + refs):
        ids += [[10 * k, y, x, 0] for y, x in grid]
    x = torch.randn(image_rows, cfg["in_channels"], generator=gen)
    ctx = torch.randn(TEXT_ROWS, cfg["joint_attention_dim"], generator=gen)
    return x, ctx, torch.tensor(ids, dtype=torch.float32), 0.7


def file_inputs(torch, path: str):
    files = TensorFiles(path)
    try:
        missing = [n for n in ("x", "ctx", "ids", "timestep") if n not in files.entries]
        if missing:
            raise SystemExit(f"{path}: missing input tensors {', '.join(missing)} (expected x, ctx, ids, timestep)")
        x, ctx, ids = (files.load(torch, n).float() for n in ("x", "ctx", "ids"))
        sigma = float(files.load(torch, "timestep").double().reshape(-1)[0])
    finally:
        files.close()
    if ids.shape != (ctx.shape[0] + x.shape[0], 4):
        raise SystemExit(f"{path}: ids has shape {list(ids.shape)}, expected [{ctx.shape[0] + x.shape[0]}, 4]")
    return x, ctx, ids, sigma


def model_timestep(torch, sigma: float, device: str):
    """t = 1000·σ computed in float64, rounded to float32 (what the timestep features see)."""
    return torch.tensor([sigma * 1000.0], dtype=torch.float64).float().to(device)


def relative_l2(torch, got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


# ---- modes ------------------------------------------------------------------------------------------------------

def import_torch():
    try:
        import torch
    except ImportError:
        raise SystemExit("PyTorch is not installed: this script needs it")
    torch.set_grad_enabled(False)
    return torch


# The reference computed its timestep features in float32 (exp, sin, cos of t·f with t = 700): a one-ulp difference in
# a float32 exp between PyTorch builds moves the output by a few 1e-7. Structural mistakes show as 1e-3 and more.
GOLDEN_TOLERANCE = 2e-6


def check_golden(torch, fixture: str) -> int:
    with open(os.path.join(fixture, "cases.json")) as f:
        cases = json.load(f)
    case = next((c for c in cases["cases"] if c["kind"] == "dit_forward"), None)
    if case is None:
        raise SystemExit(f"{fixture}/cases.json has no dit_forward case")
    folder = os.path.join(fixture, cases.get("model_dir", "model"), "transformer")
    cfg = load_config(folder)
    weights = load_weights(torch, folder, cfg, "cpu", torch.float64)
    files = TensorFiles(os.path.join(fixture, case["file"]))
    try:
        t = {n: files.load(torch, n) for n in ("hidden_states", "encoder_hidden_states", "img_ids", "txt_ids", "output")}
    finally:
        files.close()
    ids = torch.cat([t["txt_ids"], t["img_ids"]], dim=0)
    cos, sin = rope_tables(torch, ids, cfg["axes_dims_rope"], cfg["rope_theta"])
    model = Flux2(torch, cfg, weights)
    out = model.forward(t["hidden_states"].double(), t["encoder_hidden_states"].double(), cos, sin,
                        model_timestep(torch, float(case["timestep"]), "cpu"))
    err = relative_l2(torch, out, t["output"])
    ok = err <= GOLDEN_TOLERANCE
    print(f"golden {case['name']} ({folder}): output {list(out.shape)} relative L2 {err:.3e} "
          f"(torch {torch.__version__}, float64 CPU) {'PASS' if ok else 'FAIL'}")
    print("RESULT " + json.dumps({"mode": "check-golden", "case": case["name"], "rel_l2": err, "pass": ok}))
    return 0 if ok else 1


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp64": "float64"}


def float32_matmul_precision(torch) -> str:
    """"highest" when fp32 matmuls run without TF32 (recorded with the timings; recent PyTorch versions may refuse to
    answer after TF32 flags were set through both of their APIs)."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError as e:
        return f"unknown ({e})"[:120]


def run(torch, args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available to PyTorch: run on the GPU machine, or pass --device cpu")
    cuda = device.startswith("cuda")
    if cuda:
        # fp32 means full fp32 (CUDA cores): TF32 would round the operands to 10-bit mantissas.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = getattr(torch, DTYPES[args.dtype])
    folder = resolve_transformer_dir(args.model)
    cfg = load_config(folder)
    t0 = time.perf_counter()
    weights = load_weights(torch, folder, cfg, device, dtype)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    if args.inputs:
        x, ctx, ids, sigma = file_inputs(torch, args.inputs)
    else:
        x, ctx, ids, sigma = random_inputs(torch, cfg, args.size, args.refs, args.seed)
    if x.shape[1] != cfg["in_channels"] or ctx.shape[1] != cfg["joint_attention_dim"]:
        raise SystemExit(f"inputs x {list(x.shape)} / ctx {list(ctx.shape)} do not fit the model "
                         f"(in_channels {cfg['in_channels']}, joint_attention_dim {cfg['joint_attention_dim']})")
    cos, sin = (c.to(device) for c in rope_tables(torch, ids, cfg["axes_dims_rope"], cfg["rope_theta"]))
    x, ctx = x.to(device, dtype), ctx.to(device, dtype)
    t = model_timestep(torch, sigma, device)
    model = Flux2(torch, cfg, weights)
    forward = lambda: model.forward(x, ctx, cos, sin, t)  # noqa: E731

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = forward()
    result = {"mode": args.dtype, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "sequence": int(ids.shape[0]), "load_s": load_s, "weight_gb": weight_bytes / 1e9,
              "float32_matmul_precision": float32_matmul_precision(torch)}
    if args.output:
        write_f32_safetensors(torch, args.output, {"output": out})
    del out
    if args.time:
        samples = []
        for _ in range(args.warmup):
            forward()
        for _ in range(args.iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t1 = time.perf_counter()
                forward()
                samples.append((time.perf_counter() - t1) * 1e3)
        result["median_ms"] = statistics.median(samples)
        result["samples_ms"] = [round(s, 3) for s in samples]
    if cuda:
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    timing = f", median {result['median_ms']:.2f} ms of {args.iters}" if args.time else ""
    print(f"torch {args.dtype} on {result['device']}: S={result['sequence']}, weights {result['weight_gb']:.2f} GB "
          f"loaded in {load_s:.1f} s{timing}")
    print("RESULT " + json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="transformer folder (or a pipeline folder holding transformer/)")
    ap.add_argument("--check-golden", metavar="FIXTURE", help="validate against the fixture's dit_forward case and exit")
    ap.add_argument("--inputs", help="safetensors with x, ctx, ids, timestep (σ)")
    ap.add_argument("--output", help="write the output (F32) to this safetensors file")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", help="torch device (default: cuda when available)")
    ap.add_argument("--time", action="store_true", help="time --iters forwards (median)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="image side for random inputs (default %(default)s)")
    ap.add_argument("--refs", type=int, default=1, help="reference images for random inputs (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.refs < 0 or args.size < 16:
        raise SystemExit("--iters must be ≥ 1, --warmup and --refs ≥ 0, --size ≥ 16")
    torch = import_torch()
    if args.check_golden:
        return check_golden(torch, args.check_golden)
    if not args.model:
        raise SystemExit("--model is required (or --check-golden)")
    return run(torch, args)


if __name__ == "__main__":
    sys.exit(main())
