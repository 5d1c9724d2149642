#!/usr/bin/env python3
"""Plain-PyTorch Qwen3 text-encoder forward for FLUX.2 klein's prompt embeddings: the baseline of bench/text_encoder.ts.

    python3 bench/torch_text_encoder.py --model PIPELINE_DIR --ids ids.i32 --mask mask.i32 --out embeds.f32 \
        [--dtype float32|float64] [--device cuda|cpu] [--bf16-iters 10]
    python3 bench/torch_text_encoder.py --model tests/fixtures/klein-tiny/model \
        --case tests/fixtures/klein-tiny/cases/text_0.safetensors --dtype float64 --device cpu

Reads the same safetensors checkpoint (PIPELINE_DIR/text_encoder: config.json, one file or shards with an index; a
small reader here, no safetensors package needed),
runs token embeddings and the first 27 decoder layers, and writes hidden_states[9], [18] and [27] side by side as
little-endian float32 [S, 3·hidden]. Token ids and the attention mask are little-endian int32 files of S entries.
The forward follows transformers' Qwen3 (RMSNorm, per-head q/k norm, rotate-half RoPE with float32 tables,
grouped-query attention with the causal and key-padding masks, SwiGLU MLP) without importing it.

The reference evaluation runs in --dtype (float32 by default, TF32 off). --bf16-iters also times the same forward
with bf16 weights and activations (scaled_dot_product_attention), as a production PyTorch encoder would run.
--case takes ids and mask from a golden case file and reports the relative L2 error against its prompt_embeds.
A JSON line with the results is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

LAYERS_USED = 27
HIDDEN_STATES = (9, 18, 27)


def load_config(encoder_dir: str) -> dict:
    with open(os.path.join(encoder_dir, "config.json")) as f:
        cfg = json.load(f)
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    rope_type = (cfg.get("rope_scaling") or {}).get("rope_type", rope.get("rope_type", "default"))
    if theta is None:
        sys.exit(f"{encoder_dir}/config.json: no rope_theta")
    if rope_type != "default":
        sys.exit(f"{encoder_dir}/config.json: RoPE type {rope_type} is not supported")
    if cfg.get("attention_bias"):
        sys.exit(f"{encoder_dir}/config.json: attention_bias=true is not supported")
    heads = cfg["num_attention_heads"]
    return {
        "hidden": cfg["hidden_size"],
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "eps": cfg["rms_norm_eps"],
        "theta": float(theta),
        "layers": cfg["num_hidden_layers"],
    }


_TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
                 "I32": torch.int32}


def safetensors_header(path: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset of its data section."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor(path: str, header: dict, data_start: int, name: str) -> torch.Tensor:
    entry = header[name]
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        data = bytearray(f.read(end - begin))
    return torch.frombuffer(data, dtype=_TORCH_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def checkpoint_files(encoder_dir: str) -> dict[str, str]:
    """Tensor name -> file, from the shard index or the single safetensors file."""
    names = sorted(os.listdir(encoder_dir))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if index:
        with open(os.path.join(encoder_dir, index[0])) as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(encoder_dir, v) for k, v in weight_map.items()}
    files = [n for n in names if n.endswith(".safetensors")]
    if len(files) != 1:
        sys.exit(f"{encoder_dir}: expected one .safetensors file or an index, found {files}")
    path = os.path.join(encoder_dir, files[0])
    return {k: path for k in safetensors_header(path)[0]}


def load_weights(encoder_dir: str, cfg: dict, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Only the tensors the encoder reads: the embedding table and layers 0..26 (no final norm, no LM head)."""
    where = checkpoint_files(encoder_dir)
    prefix = "model." if "model.embed_tokens.weight" in where else ""
    wanted = [prefix + "embed_tokens.weight"]
    for i in range(LAYERS_USED):
        l = f"{prefix}layers.{i}."
        wanted += [l + "input_layernorm.weight", l + "post_attention_layernorm.weight"]
        wanted += [l + f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
        wanted += [l + f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
    missing = [n for n in wanted if n not in where]
    if missing:
        sys.exit(f"{encoder_dir}: missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
    headers: dict[str, tuple[dict, int]] = {}
    out = {}
    for n in wanted:
        file = where[n]
        if file not in headers:
            headers[file] = safetensors_header(file)
        header, start = headers[file]
        out[n[len(prefix):]] = read_tensor(file, header, start, n).to(device=device, dtype=dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # transformers' Qwen3RMSNorm: statistics in float32 (or wider), then the weight.
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_tables(seq: int, head_dim: int, theta: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers computes inv_freq, the angles, cos and sin in float32 for every model dtype.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(w: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, mask: torch.Tensor, fused_attention: bool) -> torch.Tensor:
    """[S] ids and [S] mask (1 real, 0 pad) -> [S, 3·hidden] prompt embeddings."""
    seq = ids.shape[0]
    H, Hkv, hd, eps = cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["eps"]
    dtype = w["embed_tokens.weight"].dtype
    cos, sin = rope_tables(seq, hd, cfg["theta"], ids.device)
    cos, sin = cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]
    # Key j is visible to query i iff j <= i and j is a real token (the causal mask combined with the padding mask).
    allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=ids.device)) & (mask[None, :] == 1)
    bias = torch.zeros(seq, seq, dtype=dtype, device=ids.device).masked_fill(~allowed, float("-inf"))
    x = w["embed_tokens.weight"][ids]
    kept = []
    for i in range(LAYERS_USED):
        l = f"layers.{i}."
        n = rms_norm(x, w[l + "input_layernorm.weight"], eps)
        q = (n @ w[l + "self_attn.q_proj.weight"].T).view(seq, H, hd)
        k = (n @ w[l + "self_attn.k_proj.weight"].T).view(seq, Hkv, hd)
        v = (n @ w[l + "self_attn.v_proj.weight"].T).view(seq, Hkv, hd)
        q = rms_norm(q, w[l + "self_attn.q_norm.weight"], eps)
        k = rms_norm(k, w[l + "self_attn.k_norm.weight"], eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, S, hd]
        if fused_attention and hasattr(torch.nn.functional, "scaled_dot_product_attention"):
            a = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed)
        else:
            scores = (qh @ kh.transpose(1, 2)) * (hd ** -0.5) + bias
            a = torch.softmax(scores, dim=-1) @ vh
        a = a.transpose(0, 1).reshape(seq, H * hd)
        h = x + a @ w[l + "self_attn.o_proj.weight"].T
        n2 = rms_norm(h, w[l + "post_attention_layernorm.weight"], eps)
        gate = n2 @ w[l + "mlp.gate_proj.weight"].T
        up = n2 @ w[l + "mlp.up_proj.weight"].T
        x = h + (torch.nn.functional.silu(gate) * up) @ w[l + "mlp.down_proj.weight"].T
        if i + 1 in HIDDEN_STATES:
            kept.append(x)
    return torch.cat(kept, dim=-1)


def median_ms(fn, device: str, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def read_i32(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=torch.int32).to(torch.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="pipeline folder with text_encoder/ (or the text_encoder folder itself)")
    ap.add_argument("--ids", help="int32 token ids [S]")
    ap.add_argument("--mask", help="int32 attention mask [S] (1 real, 0 pad)")
    ap.add_argument("--case", help="a golden text_encoder case file: ids and mask from it, error against its prompt_embeds")
    ap.add_argument("--out", help="write the embeddings here, float32 [S, 3·hidden]")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=5, help="timed runs of the reference-precision forward")
    ap.add_argument("--bf16-iters", type=int, default=0, help="also time a bf16 forward with this many runs")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    encoder_dir = os.path.join(args.model, "text_encoder") if os.path.isdir(os.path.join(args.model, "text_encoder")) else args.model
    cfg = load_config(encoder_dir)
    if cfg["layers"] < LAYERS_USED:
        sys.exit(f"{encoder_dir}: {cfg['layers']} layers, at least {LAYERS_USED} are needed")
    expected = None
    if args.case:
        header, start = safetensors_header(args.case)
        ids, mask, expected = (read_tensor(args.case, header, start, n) for n in ("input_ids", "attention_mask", "prompt_embeds"))
        ids, mask = ids.to(torch.int64), mask.to(torch.int64)
    elif args.ids and args.mask:
        ids, mask = read_i32(args.ids), read_i32(args.mask)
    else:
        sys.exit("give --ids and --mask, or --case")
    if ids.shape != mask.shape:
        sys.exit(f"--ids has {ids.shape[0]} entries but --mask has {mask.shape[0]}")
    ids, mask = ids.to(args.device), mask.to(args.device)

    result: dict[str, object] = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "dtype": args.dtype}
    t0 = time.perf_counter()
    ref_dtype = torch.float64 if args.dtype == "float64" else torch.float32
    w = load_weights(encoder_dir, cfg, ref_dtype, args.device)
    result["load_s"] = time.perf_counter() - t0
    embeds = forward(w, cfg, ids, mask, fused_attention=False)
    result[f"{args.dtype}_ms"] = median_ms(lambda: forward(w, cfg, ids, mask, fused_attention=False), args.device, args.iters)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(embeds.to(torch.float32).contiguous().cpu().numpy().tobytes())
    if expected is not None:
        diff = embeds.cpu().to(torch.float64) - expected.to(torch.float64)
        result["rel_l2_vs_case"] = float(diff.norm() / expected.to(torch.float64).norm())
        result["max_abs_vs_case"] = float(diff.abs().max())
    del w
    if args.bf16_iters > 0:
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        wb = load_weights(encoder_dir, cfg, torch.bfloat16, args.device)
        result["bf16_ms"] = median_ms(lambda: forward(wb, cfg, ids, mask, fused_attention=True), args.device, args.bf16_iters)
        if args.device.startswith("cuda"):
            result["bf16_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
