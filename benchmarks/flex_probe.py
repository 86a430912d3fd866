"""Which part of the sliding-window FlexAttention call costs what (GPU): the band alone, the band with a global
token, with a padding mask; forward alone and forward + backward; dense SDPA beside it. Base sizes by default.

    python benchmarks/flex_probe.py --lengths 4096,16384 --out benchmarks/results/

--sweep times the forward kernel (and forward + backward) over FlexAttention kernel options (tile sizes, warps,
stages) on the band + global + padding mask, for each --head-dims, beside torch's default choice and dense SDPA:

    python benchmarks/flex_probe.py --sweep --lengths 4096 --head-dims 32,64 --out benchmarks/results/
"""

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_efficient.attention.compiled import run_compiled  # noqa: E402
from hf_efficient.attention.sliding_window import flex_block_mask, sliding_window_flex  # noqa: E402

SWEEP = [None] + [{"fwd_BLOCK_M": m, "fwd_BLOCK_N": n, "fwd_num_warps": w, "fwd_num_stages": s}
                  for m in (64, 128) for n in (64, 128) for w in (4, 8) for s in (2, 3)]


def timed(function, repeats: int = 20) -> float:
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        function()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / repeats


def probe(length: int, args: argparse.Namespace) -> list[tuple]:
    """The rows of one length: each mask case, then dense SDPA."""
    device, rows = torch.device("cuda"), []
    shape = (args.batch, args.heads, length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    scaling = args.head_dim**-0.5
    is_global = torch.zeros(args.batch, length, dtype=torch.bool, device=device)
    is_global[:, 0] = True
    keep = torch.ones(args.batch, length, dtype=torch.bool, device=device)
    cases = {"band": (None, None), "band + global": (None, is_global), "band + global + keep": (keep, is_global),
             "band + keep": (keep, None)}
    for name, (keep_mask, global_mask) in cases.items():
        def build(keep_mask=keep_mask, global_mask=global_mask):
            return flex_block_mask(length, args.window // 2, 1, False, keep_mask, global_mask, device)

        mask = build()
        counts = mask.kv_num_blocks.float().mean().item()
        full = mask.full_kv_num_blocks.float().mean().item() if mask.full_kv_num_blocks is not None else 0.0
        build_ms = timed(build, repeats=5)
        with torch.no_grad():
            forward = timed(lambda mask=mask: sliding_window_flex(q, k, v, mask, scaling))
        both = timed(lambda mask=mask: sliding_window_flex(q, k, v, mask, scaling).sum().backward())
        rows.append((length, name, f"{counts:.1f} partial + {full:.1f} full", build_ms, forward, both))
    with torch.no_grad():
        forward = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    both = timed(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    rows.append((length, "dense SDPA", "-", 0.0, forward, both))
    return rows


def sweep(length: int, head_dim: int, args: argparse.Namespace) -> list[tuple]:
    """Forward and forward + backward ms of one FlexAttention call per kernel option set (None: torch's default)."""
    from torch.nn.attention.flex_attention import flex_attention

    device, rows = torch.device("cuda"), []
    heads = args.hidden // head_dim
    shape = (args.batch, heads, length, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    is_global = torch.zeros(args.batch, length, dtype=torch.bool, device=device)
    is_global[:, 0] = True
    keep = torch.ones(args.batch, length, dtype=torch.bool, device=device)
    keep[1:, length * 3 // 4:] = False  # a padded batch
    mask = flex_block_mask(length, args.window // 2, 1, False, keep, is_global, device)
    for options in SWEEP:
        def call(options=options):
            return run_compiled(flex_attention, q, k, v, block_mask=mask, scale=head_dim**-0.5,
                                kernel_options=options)
        try:
            with torch.no_grad():
                forward = timed(call)
            both = timed(lambda: call().sum().backward())
        except Exception as error:  # a tile / warp choice the kernel cannot build: the row says so
            rows.append((length, head_dim, options, math.nan, math.nan, type(error).__name__))
            continue
        rows.append((length, head_dim, options, forward, both, ""))
    with torch.no_grad():
        forward = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append((length, head_dim, "dense SDPA (no mask)", forward,
                 timed(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()), ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sweep", action="store_true", help="time FlexAttention kernel options (see above)")
    parser.add_argument("--head-dims", default="32,64", help="--sweep: head dims (heads = --hidden / head dim)")
    parser.add_argument("--hidden", type=int, default=768, help="--sweep: model width")
    args = parser.parse_args()
    if args.sweep:
        rows = [row for length in args.lengths.split(",") for head_dim in args.head_dims.split(",")
                for row in sweep(int(length), int(head_dim), args)]
        lines = ["| N | head dim | forward kernel options | forward ms | forward + backward ms | error |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {d} | {options or 'torch default'} | {fwd:.3f} | {both:.3f} | {error} |"
                  for n, d, options, fwd, both, error in rows]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "flex_sweep.md").write_text(text)
        return
    rows = [row for length in args.lengths.split(",") for row in probe(int(length), args)]
    lines = ["| N | case | kv tiles per q tile | BlockMask build ms | forward ms | forward + backward ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {name} | {tiles} | {build:.2f} | {fwd:.2f} | {both:.2f} |"
              for n, name, tiles, build, fwd, both in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "flex_probe.md").write_text(text)


if __name__ == "__main__":
    main()
