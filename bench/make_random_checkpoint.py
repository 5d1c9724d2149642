#!/usr/bin/env python3
"""Random bf16 checkpoints at the real shapes of FLUX.2 klein, in the layouts the published repositories use, so that
benchmarks can run on the GPU machine without downloading weights.

    python3 bench/make_random_checkpoint.py --kind transformer --preset klein-9b --out /tmp/klein-9b [--seed 0] [--shard-gb 5]
    python3 bench/make_random_checkpoint.py --kind text_encoder --preset qwen3-8b --layers 27 --out DIR
    python3 bench/make_random_checkpoint.py --kind vae --preset flux2 --out DIR
    python3 bench/make_random_checkpoint.py --kind pipeline --preset klein-9b --out DIR
    python3 bench/make_random_checkpoint.py --kind transformer --preset klein-4b --list    # names and shapes as JSON

Kinds and presets:
  transformer   klein-4b (5 double + 20 single blocks, 24 heads), klein-9b (8 + 24, 32 heads), tiny (2 + 2, 2 heads)
                diffusers Flux2Transformer2DModel names, config.json, shards + diffusion_pytorch_model.safetensors.index.json
  text_encoder  qwen3-8b, qwen3-4b, tiny: transformers Qwen3ForCausalLM names (model.layers.N.…, no LM head: the config
                ties the embeddings), config.json, shards + model.safetensors.index.json; --layers sets num_hidden_layers
  vae           flux2 (block_out_channels 128,256,512,512, latent_channels 32), tiny: diffusers AutoencoderKLFlux2
  pipeline      klein-9b (+ qwen3-8b + flux2 VAE), klein-4b (+ qwen3-4b + flux2 VAE), tiny: model_index.json
                (is_distilled true), transformer/, text_encoder/, vae/, and tokenizer/ and scheduler/ copied from the
                test fixture tests/fixtures/klein-tiny/model

Values: every matrix N(0, 1)/sqrt(fan_in) (convolutions: fan_in = in_channels·k·k), norm weights 1 + 0.2·N(0, 1), norm
biases 0.2·N, other biases 0.05·N, the VAE's batch-norm mean 0.3·N and variance 0.5 + |0.2·N|; rounded to bf16. Each
tensor has its own generator seeded from (--seed, its index), so the values do not depend on the sharding. Tensors are
generated with torch on the GPU when there is one and written shard by shard, one tensor in host memory at a time. The
output folder appears complete or not at all (it is written beside the target and renamed).

The layout functions (names, shapes, configs) need no torch: bench/torch_flux2.py imports them, and --list prints them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_MODEL = os.path.join(REPO_ROOT, "tests", "fixtures", "klein-tiny", "model")

# ---- layouts ----------------------------------------------------------------------------------------------------

TRANSFORMER_PRESETS = {
    "klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680, in_channels=128),
    "klein-9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288, in_channels=128),
    # The test fixture's dimensions: 2 heads × 128, 32 latent channels in (8 latent channels packed 2×2), Qwen3 hidden 32.
    "tiny": dict(num_layers=2, num_single_layers=2, num_attention_heads=2, joint_attention_dim=96, in_channels=32),
}

TEXT_ENCODER_PRESETS = {
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "tiny": dict(hidden_size=32, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}

VAE_PRESETS = {
    "flux2": dict(block_out_channels=[128, 256, 512, 512], norm_num_groups=32, latent_channels=32),
    "tiny": dict(block_out_channels=[16, 32, 32, 32], norm_num_groups=8, latent_channels=8),
}

PIPELINE_PRESETS = {
    "klein-9b": dict(transformer="klein-9b", text_encoder="qwen3-8b", vae="flux2"),
    "klein-4b": dict(transformer="klein-4b", text_encoder="qwen3-4b", vae="flux2"),
    "tiny": dict(transformer="tiny", text_encoder="tiny", vae="tiny"),
}

PRESETS = {"transformer": TRANSFORMER_PRESETS, "text_encoder": TEXT_ENCODER_PRESETS, "vae": VAE_PRESETS, "pipeline": PIPELINE_PRESETS}

DIFFUSERS_VERSION = "0.40.0.dev0"
QWEN3_LAYERS_FOR_KLEIN = 27  # FLUX.2 klein reads Qwen3 hidden states 9, 18 and 27


def transformer_config(preset: str) -> dict:
    p = TRANSFORMER_PRESETS[preset]
    return {
        "_class_name": "Flux2Transformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "attention_head_dim": 128,
        "axes_dims_rope": [32, 32, 32, 32],
        "eps": 1e-06,
        "guidance_embeds": False,
        "in_channels": p["in_channels"],
        "joint_attention_dim": p["joint_attention_dim"],
        "mlp_ratio": 3.0,
        "num_attention_heads": p["num_attention_heads"],
        "num_layers": p["num_layers"],
        "num_single_layers": p["num_single_layers"],
        "out_channels": None,
        "patch_size": 1,
        "rope_theta": 2000,
        "timestep_guidance_channels": 256,
    }


def transformer_tensor_shapes(config: dict) -> list[tuple[str, list[int]]]:
    """Every tensor of a diffusers Flux2Transformer2DModel (klein: no biases, no guidance embedder)."""
    hd = config["attention_head_dim"]
    d = config["num_attention_heads"] * hd
    f = int(d * config.get("mlp_ratio", 3.0))
    c_in = config["in_channels"]
    c_out = config.get("out_channels") or c_in
    shapes: list[tuple[str, list[int]]] = [
        ("time_guidance_embed.timestep_embedder.linear_1.weight", [d, config.get("timestep_guidance_channels", 256)]),
        ("time_guidance_embed.timestep_embedder.linear_2.weight", [d, d]),
        ("double_stream_modulation_img.linear.weight", [6 * d, d]),
        ("double_stream_modulation_txt.linear.weight", [6 * d, d]),
        ("single_stream_modulation.linear.weight", [3 * d, d]),
        ("x_embedder.weight", [d, c_in]),
        ("context_embedder.weight", [d, config["joint_attention_dim"]]),
    ]
    for i in range(config["num_layers"]):
        b = f"transformer_blocks.{i}"
        for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            shapes.append((f"{b}.attn.{p}.weight", [d, d]))
        for p in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            shapes.append((f"{b}.attn.{p}.weight", [hd]))
        shapes.append((f"{b}.attn.to_out.0.weight", [d, d]))
        shapes.append((f"{b}.attn.to_add_out.weight", [d, d]))
        for ff in ("ff", "ff_context"):
            shapes.append((f"{b}.{ff}.linear_in.weight", [2 * f, d]))
            shapes.append((f"{b}.{ff}.linear_out.weight", [d, f]))
    for i in range(config["num_single_layers"]):
        b = f"single_transformer_blocks.{i}.attn"
        shapes.append((f"{b}.to_qkv_mlp_proj.weight", [3 * d + 2 * f, d]))
        shapes.append((f"{b}.to_out.weight", [d, d + f]))
        shapes.append((f"{b}.norm_q.weight", [hd]))
        shapes.append((f"{b}.norm_k.weight", [hd]))
    shapes.append(("norm_out.linear.weight", [2 * d, d]))
    shapes.append(("proj_out.weight", [c_out, d]))
    return shapes


def text_encoder_config(preset: str, layers: int) -> dict:
    p = TEXT_ENCODER_PRESETS[preset]
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": p["head_dim"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": p["intermediate_size"],
        "layer_types": ["full_attention"] * layers,
        "max_position_embeddings": 40960,
        "max_window_layers": layers,
        "model_type": "qwen3",
        "num_attention_heads": p["num_attention_heads"],
        "num_hidden_layers": layers,
        "num_key_value_heads": p["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        # No lm_head.weight is written: the output projection is the (tied) embedding table.
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }


def text_encoder_tensor_shapes(config: dict) -> list[tuple[str, list[int]]]:
    h, inter, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes: list[tuple[str, list[int]]] = [("model.embed_tokens.weight", [config["vocab_size"], h])]
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}"
        shapes += [
            (f"{b}.input_layernorm.weight", [h]),
            (f"{b}.self_attn.q_proj.weight", [q, h]),
            (f"{b}.self_attn.k_proj.weight", [kv, h]),
            (f"{b}.self_attn.v_proj.weight", [kv, h]),
            (f"{b}.self_attn.o_proj.weight", [h, q]),
            (f"{b}.self_attn.q_norm.weight", [hd]),
            (f"{b}.self_attn.k_norm.weight", [hd]),
            (f"{b}.post_attention_layernorm.weight", [h]),
            (f"{b}.mlp.gate_proj.weight", [inter, h]),
            (f"{b}.mlp.up_proj.weight", [inter, h]),
            (f"{b}.mlp.down_proj.weight", [h, inter]),
        ]
    shapes.append(("model.norm.weight", [h]))
    return shapes


def vae_config(preset: str) -> dict:
    p = VAE_PRESETS[preset]
    levels = len(p["block_out_channels"])
    return {
        "_class_name": "AutoencoderKLFlux2",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "batch_norm_eps": 0.0001,
        "batch_norm_momentum": 0.1,
        "block_out_channels": list(p["block_out_channels"]),
        "decoder_block_out_channels": None,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": p["latent_channels"],
        "layers_per_block": 2,
        "mid_block_add_attention": True,
        "norm_num_groups": p["norm_num_groups"],
        "out_channels": 3,
        "patch_size": [2, 2],
        "sample_size": 1024,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }


def vae_tensor_shapes(config: dict) -> list[tuple[str, list[int]]]:
    """Every tensor of diffusers' AutoencoderKLFlux2 (as model/vae/weights.ts expects), plus bn.num_batches_tracked."""
    shapes: list[tuple[str, list[int]]] = []

    def conv(name, cout, cin, k):
        shapes.append((f"{name}.weight", [cout, cin, k, k]))
        shapes.append((f"{name}.bias", [cout]))

    def norm(name, c):
        shapes.append((f"{name}.weight", [c]))
        shapes.append((f"{name}.bias", [c]))

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.conv_shortcut", cout, cin, 1)

    def mid_block(name, c):
        resnet(f"{name}.resnets.0", c, c)
        a = f"{name}.attentions.0"
        norm(f"{a}.group_norm", c)
        for p in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes.append((f"{a}.{p}.weight", [c, c]))
            shapes.append((f"{a}.{p}.bias", [c]))
        resnet(f"{name}.resnets.1", c, c)

    b = config["block_out_channels"]
    d = config.get("decoder_block_out_channels") or b
    lc = config["latent_channels"]
    layers = config["layers_per_block"]
    conv("encoder.conv_in", b[0], config["in_channels"], 3)
    for i, cout in enumerate(b):
        cin = b[0] if i == 0 else b[i - 1]
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(b) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
    mid_block("encoder.mid_block", b[-1])
    norm("encoder.conv_norm_out", b[-1])
    conv("encoder.conv_out", 2 * lc, b[-1], 3)
    conv("quant_conv", 2 * lc, 2 * lc, 1)
    conv("post_quant_conv", lc, lc, 1)
    conv("decoder.conv_in", d[-1], lc, 3)
    mid_block("decoder.mid_block", d[-1])
    rev = list(reversed(d))
    for i, cout in enumerate(rev):
        cin = rev[0] if i == 0 else rev[i - 1]
        for j in range(layers + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(rev) - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    norm("decoder.conv_norm_out", d[0])
    conv("decoder.conv_out", config["out_channels"], d[0], 3)
    shapes.append(("bn.running_mean", [4 * lc]))
    shapes.append(("bn.running_var", [4 * lc]))
    shapes.append(("bn.num_batches_tracked", []))
    return shapes


# ---- values -----------------------------------------------------------------------------------------------------

def value_rule(name: str, shape: list[int]) -> tuple[str, float]:
    """How a tensor is drawn: ("normal", scale), ("one_plus", scale), ("variance", scale) or ("zero", 0)."""
    if name.endswith("num_batches_tracked"):
        return ("zero", 0.0)
    if name == "bn.running_mean":
        return ("normal", 0.3)
    if name == "bn.running_var":
        return ("variance", 0.2)
    if len(shape) >= 2:
        return ("normal", 1.0 / math.sqrt(math.prod(shape[1:])))
    is_norm = "norm" in name
    if name.endswith(".bias"):
        return ("normal", 0.2 if is_norm else 0.05)
    return ("one_plus", 0.2)


def tensor_dtype(name: str) -> str:
    return "I64" if name.endswith("num_batches_tracked") else "BF16"


DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4}


def tensor_bytes(dtype: str, shape: list[int]) -> int:
    return DTYPE_BYTES[dtype] * math.prod(shape)


class TensorMaker:
    """Draws each tensor with torch (on the GPU when there is one) and returns its little-endian bytes."""

    def __init__(self, seed: int, device: str | None):
        try:
            import torch
        except ImportError:
            raise SystemExit("PyTorch is not installed: generating a checkpoint needs it (--list does not)")
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.seed = seed

    def make(self, index: int, name: str, shape: list[int]):
        torch = self.torch
        kind, scale = value_rule(name, shape)
        if kind == "zero":
            return torch.zeros(shape, dtype=torch.int64).numpy()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + index)
        t = torch.randn(shape, generator=gen, device=self.device, dtype=torch.float32)
        if kind == "normal":
            t = t * scale
        elif kind == "one_plus":
            t = 1.0 + t * scale
        else:  # variance: positive, around 0.5
            t = 0.5 + (t * scale).abs()
        return t.to(torch.bfloat16).view(torch.int16).cpu().numpy()


# ---- safetensors writing ----------------------------------------------------------------------------------------

def safetensors_header(entries: list[tuple[str, str, list[int]]], metadata: dict | None = None) -> bytes:
    """The 8-byte length and the JSON header (padded with spaces to a multiple of 8) for tensors stored in order."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in entries:
        size = tensor_bytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path: str, tensors: list[tuple[str, str, list[int], bytes]], metadata: dict | None = None) -> None:
    """Write small tensors given as (name, dtype, shape, little-endian bytes), atomically."""
    for name, dtype, shape, data in tensors:
        if len(data) != tensor_bytes(dtype, shape):
            raise ValueError(f"tensor {name} {shape} {dtype} needs {tensor_bytes(dtype, shape)} bytes, got {len(data)}")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(safetensors_header([(n, d, s) for n, d, s, _ in tensors], metadata))
        for _, _, _, data in tensors:
            f.write(data)
    os.replace(tmp, path)


def plan_shards(shapes: list[tuple[str, list[int]]], shard_bytes: int) -> list[list[int]]:
    """Tensor indices per shard, in order; a shard closes when the next tensor would take it past shard_bytes."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (name, shape) in enumerate(shapes):
        b = tensor_bytes(tensor_dtype(name), shape)
        if shards[-1] and size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += b
    return shards


def write_component(out_dir: str, file_stem: str, shapes: list[tuple[str, list[int]]], maker: TensorMaker,
                    shard_bytes: int, always_index: bool, log) -> int:
    """Write the tensors into `out_dir` as `<stem>.safetensors` (one shard, no index) or `<stem>-0000K-of-0000N.safetensors`
    shards with `<stem>.safetensors.index.json`. Returns the bytes written."""
    os.makedirs(out_dir, exist_ok=True)
    shards = plan_shards(shapes, shard_bytes)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    t0 = time.perf_counter()
    for k, members in enumerate(shards):
        file = f"{file_stem}.safetensors" if n == 1 and not always_index else f"{file_stem}-{k + 1:05d}-of-{n:05d}.safetensors"
        entries = [(shapes[i][0], tensor_dtype(shapes[i][0]), shapes[i][1]) for i in members]
        with open(os.path.join(out_dir, file), "wb") as f:
            f.write(safetensors_header(entries, {"format": "pt"}))
            for i in members:
                name, shape = shapes[i]
                data = maker.make(i, name, shape)
                if data.nbytes != tensor_bytes(tensor_dtype(name), shape):
                    raise RuntimeError(f"tensor {name}: drew {data.nbytes} bytes, expected {tensor_bytes(tensor_dtype(name), shape)}")
                f.write(memoryview(data.reshape(-1)).cast("B"))
                total += data.nbytes
                weight_map[name] = file
        log(f"  {file}: {len(members)} tensors, {total / 1e9:.2f} GB so far ({time.perf_counter() - t0:.1f} s)")
    if n > 1 or always_index:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(out_dir, f"{file_stem}.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return total


def write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


# ---- components -------------------------------------------------------------------------------------------------

def component_layouts(kind: str, preset: str, layers: int) -> dict[str, tuple[dict, list[tuple[str, list[int]]]]]:
    """Sub-folder ("" for a single component) → (config, tensor shapes)."""
    if kind == "transformer":
        cfg = transformer_config(preset)
        return {"": (cfg, transformer_tensor_shapes(cfg))}
    if kind == "text_encoder":
        cfg = text_encoder_config(preset, layers)
        return {"": (cfg, text_encoder_tensor_shapes(cfg))}
    if kind == "vae":
        cfg = vae_config(preset)
        return {"": (cfg, vae_tensor_shapes(cfg))}
    p = PIPELINE_PRESETS[preset]
    out = {}
    for sub, (cfg_kind, sub_preset) in {"transformer": ("transformer", p["transformer"]),
                                         "text_encoder": ("text_encoder", p["text_encoder"]),
                                         "vae": ("vae", p["vae"])}.items():
        out[sub] = component_layouts(cfg_kind, sub_preset, layers)[""]
    return out


FILE_STEMS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}

MODEL_INDEX = {
    "_class_name": "Flux2KleinPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "is_distilled": True,
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3ForCausalLM"],
    "tokenizer": ["transformers", "TokenizersBackend"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}


def write_checkpoint(kind: str, preset: str, out: str, layers: int, seed: int, shard_gb: float, device: str | None, log) -> int:
    layouts = component_layouts(kind, preset, layers)
    total_bytes = sum(tensor_bytes(tensor_dtype(n), s) for _, shapes in layouts.values() for n, s in shapes)
    if os.path.exists(out):
        raise SystemExit(f"--out {out} already exists: remove it or choose another folder")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < total_bytes * 1.02 + (64 << 20):
        raise SystemExit(f"{parent} has {free / 1e9:.1f} GB free, the checkpoint needs {total_bytes / 1e9:.1f} GB")
    if kind == "pipeline":
        # A folder without its files (a partial copy of the fixture) would give a pipeline that fails only when loaded.
        for sub, name in (("tokenizer", "tokenizer.json"), ("tokenizer", "tokenizer_config.json"), ("scheduler", "scheduler_config.json")):
            if not os.path.isfile(os.path.join(FIXTURE_MODEL, sub, name)):
                raise SystemExit(f"{os.path.join(FIXTURE_MODEL, sub, name)} is missing: a pipeline folder copies its {sub}/ from the fixture")
    maker = TensorMaker(seed, device)
    log(f"writing a random {kind} ({preset}, {total_bytes / 1e9:.2f} GB bf16) to {out} with torch on {maker.device}")
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        written = 0
        for sub, (cfg, shapes) in layouts.items():
            component = kind if sub == "" else sub
            folder = os.path.join(tmp, sub) if sub else tmp
            os.makedirs(folder, exist_ok=True)
            write_json(os.path.join(folder, "config.json"), cfg)
            written += write_component(folder, FILE_STEMS[component], shapes, maker, int(shard_gb * 1e9),
                                       always_index=component != "vae", log=log)
        if kind == "pipeline":
            write_json(os.path.join(tmp, "model_index.json"), MODEL_INDEX)
            for sub in ("tokenizer", "scheduler"):
                shutil.copytree(os.path.join(FIXTURE_MODEL, sub), os.path.join(tmp, sub))
                for root, dirs, files in os.walk(os.path.join(tmp, sub)):  # the fixture is read-only; the copy need not be
                    os.chmod(root, 0o755)
                    for f in files:
                        os.chmod(os.path.join(root, f), 0o644)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=sorted(PRESETS))
    ap.add_argument("--preset", required=True, help="see the kinds above")
    ap.add_argument("--out", help="folder to create (must not exist)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=5.0, help="largest shard in GB (default %(default)s)")
    ap.add_argument("--layers", type=int, default=QWEN3_LAYERS_FOR_KLEIN,
                    help="text encoder layers (num_hidden_layers, default %(default)s: what klein reads)")
    ap.add_argument("--device", help="torch device for drawing the values (default: cuda when available, else cpu)")
    ap.add_argument("--list", action="store_true", help="print the tensor names and shapes as JSON and exit (no torch needed)")
    args = ap.parse_args(argv)
    if args.preset not in PRESETS[args.kind]:
        raise SystemExit(f"--preset {args.preset} is not a {args.kind} preset (known: {', '.join(sorted(PRESETS[args.kind]))})")
    if args.layers <= 0:
        raise SystemExit(f"--layers must be positive, got {args.layers}")
    if not args.shard_gb > 0:
        raise SystemExit(f"--shard-gb must be positive, got {args.shard_gb}")
    if args.list:
        layouts = component_layouts(args.kind, args.preset, args.layers)
        listing = {sub: {"config": cfg, "tensors": {n: s for n, s in shapes}} for sub, (cfg, shapes) in layouts.items()}
        print(json.dumps(listing[""] if "" in listing else listing))
        return
    if not args.out:
        raise SystemExit("--out is required (or --list)")
    t0 = time.perf_counter()
    written = write_checkpoint(args.kind, args.preset, args.out, args.layers, args.seed, args.shard_gb, args.device,
                               log=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    print(f"wrote {written / 1e9:.2f} GB to {args.out} in {seconds:.1f} s ({written / 1e9 / max(seconds, 1e-9):.2f} GB/s)")


if __name__ == "__main__":
    sys.exit(main())
