#!/usr/bin/env python3
"""PyTorch baselines for the WebGPU kernels, timed on CUDA with events (median of several runs).

    python3 bench/torch_baseline.py matmul --shapes "2560,4096,4096;8704,4096,36864" --iters 20
    python3 bench/torch_baseline.py attention --seqs 2560 --json /tmp/torch_attention.json

--json PATH also writes every measurement (shape, mode, median ms, TFLOP/s) with the device and torch version, for
bench/summary.ts. Each benchmark is a sub-command: a function that adds its arguments and a function that runs it, registered in
BENCHMARKS. Shapes follow bench/*.ts: "M,K,N" triples separated by ';'.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

GPU_MATMUL_SHAPES = "2560,4096,4096;8704,4096,36864;2560,3072,9216"


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for part in text.split(";"):
        if not part.strip():
            continue
        dims = [d.strip() for d in part.split(",")]
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise SystemExit(f'--shapes: "{part}" is not M,K,N with three positive integers')
        shapes.append((int(dims[0]), int(dims[1]), int(dims[2])))
    return shapes


def median_ms(torch, device: str, fn: Callable[[], object], iters: int, warmup: int) -> float:
    """Median time of one call of fn, in milliseconds: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def write_json(args: argparse.Namespace, torch, device_name: str, results: list[dict]) -> None:
    """Every measurement of the run, for --json PATH."""
    if not args.json:
        return
    doc = {
        "benchmark": args.benchmark,
        "device": device_name,
        "torch_device": args.device,
        "torch": torch.__version__,
        "iters": args.iters,
        "warmup": args.warmup,
        "results": results,
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def import_torch(device: str):
    try:
        import torch
    except ImportError:
        raise SystemExit("PyTorch is not installed: these baselines need it (pip install torch)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available to PyTorch: run on the GPU machine, or pass --device cpu")
    return torch


# ---- matmul ---------------------------------------------------------------------------------------------------


def add_matmul_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", default=GPU_MATMUL_SHAPES, help='"M,K,N;..." (default: %(default)s)')
    p.add_argument("--modes", default="fp32,bf16", help="fp32 (TF32 off), tf32, bf16; comma-separated (default: %(default)s)")


MATMUL_MODES = ("fp32", "tf32", "bf16")


def run_matmul(args: argparse.Namespace) -> None:
    """y = x · Wᵀ with W stored [N, K] (torch.nn.functional.linear), as the WebGPU kernel computes it."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MATMUL_MODES:
            raise SystemExit(f'--modes: "{m}" is not one of {", ".join(MATMUL_MODES)}')
    shapes = parse_shapes(args.shapes)
    torch = import_torch(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}, median of {args.iters} runs")
    rows = []
    results = []
    for m, k, n in shapes:
        row = [f"{m}×{k}×{n}"]
        for mode in modes:
            dtype = torch.bfloat16 if mode == "bf16" else torch.float32
            # TF32 would round the fp32 operands to 10-bit mantissas: the fp32 baseline keeps full precision.
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            gen = torch.Generator(device=args.device).manual_seed(0)
            x = torch.randn(m, k, device=args.device, dtype=dtype, generator=gen)
            w = torch.randn(n, k, device=args.device, dtype=dtype, generator=gen)
            ms = median_ms(torch, args.device, lambda: torch.nn.functional.linear(x, w), args.iters, args.warmup)
            tflops = 2 * m * n * k / (ms * 1e-3) / 1e12
            row.append(f"{tflops:.2f} ({ms:.3f} ms)")
            results.append({"m": m, "k": k, "n": n, "mode": mode, "median_ms": ms, "tflops": tflops})
            del x, w
        torch.backends.cuda.matmul.allow_tf32 = False
        rows.append(row)
        print("  ".join(row), flush=True)
    print()
    print_table(["M×K×N"] + [f"{mode} TFLOP/s" for mode in modes], rows)
    write_json(args, torch, name, results)


# ---- attention ------------------------------------------------------------------------------------------------


def add_attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seqs", default="2560,8704", help="sequence lengths, comma-separated (default: %(default)s)")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--modes", default="fp32,bf16", help="fp32 (TF32 off), bf16; comma-separated (default: %(default)s)")


def run_attention(args: argparse.Namespace) -> None:
    """SDPA at bench/attention.ts's shapes, without and with the knockout mask "ref->text" (text = the first
    min(512, S/5) tokens may not read the last S/4) as an additive -inf mask. TFLOP/s counts 4·S²·D·H. PyTorch
    before 2.0 has no SDPA: there the product is written out ("impl": "math" in --json)."""
    torch = import_torch(args.device)
    seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("fp32", "bf16"):
            raise SystemExit(f'--modes: "{m}" is not fp32 or bf16')
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}, median of {args.iters} runs")
    h, d = args.heads, args.head_dim
    # PyTorch before 2.0 has no SDPA: the same product written out (scores, softmax, weighted sum).
    sdpa_fn = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    impl = "sdpa" if sdpa_fn else "math"

    def attend(q, k, v, mask):
        if sdpa_fn:
            return sdpa_fn(q, k, v, attn_mask=mask)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (d**-0.5)
        if mask is not None:
            scores = scores + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    rows = []
    results = []
    for mode in modes:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        for seq in seqs:
            gen = torch.Generator(device=args.device).manual_seed(0)
            q, k, v = (torch.rand(1, h, seq, d, device=args.device, generator=gen).mul_(2).sub_(1).to(dtype) for _ in range(3))
            for masked in (False, True):
                mask = None
                if masked:
                    text, ref = min(512, seq // 5), seq // 4
                    mask = torch.zeros(1, 1, seq, seq, device=args.device, dtype=dtype)
                    mask[..., :text, seq - ref:] = float("-inf")
                sdpa = lambda: attend(q, k, v, mask)  # noqa: E731
                ms = median_ms(torch, args.device, sdpa, args.iters, args.warmup)
                tflops = 4 * seq * seq * d * h / (ms * 1e-3) / 1e12
                row = [mode, f"H{h} D{d} S{seq}", "ref->text" if masked else "none", f"{ms:.3f}", f"{tflops:.2f}"]
                results.append(
                    {"seq": seq, "heads": h, "head_dim": d, "masked": masked, "mode": mode, "median_ms": ms, "tflops": tflops, "impl": impl}
                )
                rows.append(row)
                print("  ".join(row), flush=True)
                del mask
            del q, k, v
    print()
    print_table(["mode", "shape", "mask", "median ms", "TFLOP/s"], rows)
    write_json(args, torch, name, results)


# ---- registry -------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "matmul": ("x[M,K] · W[N,K]ᵀ in fp32 (TF32 off) and bf16", add_matmul_args, run_matmul),
    "attention": ("SDPA (no mask / knockout mask) in fp32 (TF32 off) and bf16", add_attention_args, run_attention),
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (help_text, add_args, run) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--iters", type=int, default=20, help="timed runs (default: %(default)s)")
        p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: %(default)s)")
        p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a quick check")
        p.add_argument("--json", metavar="PATH", help="also write every measurement to this JSON file")
        add_args(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    if args.iters < 1:
        raise SystemExit("--iters must be at least 1")
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
