"""Where a base-size train step's time goes: FLOPs counted, each attention kernel's achieved TFLOP/s, a profile.

The longformer-base-4096 fine-tuning shape (issue: base size at 4K): 12 layers x 768, 12 heads of 64, window 512,
the first token global, batch 4, masked-LM labels on 15% of tokens (each head's own loss), bf16 weights, at 4K and
16K tokens, for our Longformer (FlexAttention on CUDA), dense SDPA BERT (flash attention) and transformers'
Longformer. For each: the train step's median time, a torch.profiler trace of one step grouped into attention
kernels, matrix multiplies and the rest, and achieved TFLOP/s = counted FLOPs / kernel time:

* attention FLOPs: 4 d per kept query-key pair (q k^T and p v) forward, 2.5x that backward (five matmuls), counted
  over the pairs the pattern keeps (dense: N^2; sliding window: |i - j| <= w/2, plus the global row and column);
* projection and MLP FLOPs: 2 x tokens x (4 h^2 + 2 h i) per layer forward, 2x backward; the masked-LM head on the
  labelled rows only where the head skips the rest (ours), on every row otherwise.

    python benchmarks/base_profile.py --out benchmarks/results/         # on a GPU, ~3 minutes
    python benchmarks/base_profile.py --device cpu --tiny --out /tmp/p  # CPU smoke test
"""

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (the model builders and the step of benchmarks/train_step.py)

CATEGORIES = (("attention", ("flash", "flex", "attention", "fmha", "softmax")),
              ("matmul", ("gemm", "nvjet", "cutlass", "matmul", "sm90_xmma", "cublas", "aten::mm", "addmm", "bmm")))


def sliding_pairs(length: int, window: int, global_tokens: int) -> int:
    """Query-key pairs kept by a two-sided window of `window` (|i - j| <= window/2) plus global tokens' rows and
    columns (each pair counted once)."""
    one_sided = window // 2
    band = sum(min(i, one_sided) + min(length - 1 - i, one_sided) + 1 for i in range(length))
    outside_band = length - (one_sided + 1)  # keys a global token at position 0 sees beyond its band
    return band + 2 * global_tokens * max(outside_band, 0)


def model_flops(sizes, length: int, batch: int, attention_pairs: int, head_rows: int) -> dict:
    """Forward + backward FLOPs of one train step: attention (per kept pair), the rest (dense layers, LM head)."""
    hidden, inter, layers = sizes.hidden, sizes.intermediate, sizes.layers
    attention = 3.5 * 4 * sizes.head_dim * sizes.heads * attention_pairs * batch * layers
    dense = 3 * 2 * batch * length * (4 * hidden**2 + 2 * hidden * inter) * layers
    head = 3 * 2 * head_rows * (hidden**2 + hidden * sizes.vocab)
    return {"attention": attention, "dense": dense, "head": head}


def kernel_times(step, device: torch.device) -> dict:
    """CUDA (or CPU) time of one profiled step, seconds, by category, and the ten longest kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as trace:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    totals, kernels = {"attention": 0.0, "matmul": 0.0, "other": 0.0}, {}
    for event in trace.key_averages():
        seconds = (event.device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        if seconds <= 0 or (device.type == "cpu" and not event.key.startswith("aten::")):
            continue
        name = event.key.lower()
        category = next((c for c, words in CATEGORIES if any(w in name for w in words)), "other")
        totals[category] += seconds
        kernels[event.key] = kernels.get(event.key, 0.0) + seconds
    top = sorted(kernels.items(), key=lambda item: -item[1])[:10]
    return {"totals": totals, "top": top}


def measure(name: str, length: int, setup, args) -> dict:
    device = setup.device
    spec = train_step.SPECS[name]
    torch.manual_seed(0)
    model = spec.build(length, setup).to(device, setup.dtype).train()
    batch = train_step.make_batch(length, setup.sizes.vocab, device, args.batch, global_first=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        train_step.masked_lm_loss(model, batch, own_loss=True)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    median = statistics.median(train_step.timed_call(step, device) for _ in range(args.repeats))
    profiled = kernel_times(step, device)
    window = setup.knobs.window
    pairs = length * length if name == "bert_sdpa" else sliding_pairs(length, window, 1)
    labelled = int((batch["labels"] != -100).sum())
    head_rows = labelled if spec.group == "ours" else args.batch * length
    flops = model_flops(setup.sizes, length, args.batch, pairs, head_rows)
    return {"model": name, "length": length, "step_s": median, "flops": flops, **profiled}


def report(rows: list[dict], args, setup) -> str:
    sizes = setup.sizes
    lines = ["# Base size: where the train step's time goes", "",
             f"- {setup.sizes.layers} layers x {sizes.hidden}, {sizes.heads} heads of {sizes.head_dim}, window "
             f"{setup.knobs.window}, first token global, batch {args.batch}, {setup.dtype}, device "
             f"{train_step.environment_fields(setup.device, setup.dtype, sizes.layers)['device_name']}; torch "
             f"{torch.__version__}", "- TFLOP/s = counted FLOPs / measured time (forward + backward); kernel times "
             "from torch.profiler over one step", "",
             "| model | N | step ms | tok/s | attention TFLOP | attention kernels ms | attention TFLOP/s | "
             "matmul kernels ms | dense+head TFLOP | matmul TFLOP/s | other ms | whole-step TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        flops, totals = row["flops"], row["totals"]
        other_flops = flops["dense"] + flops["head"]
        rate = lambda f, s: f"{f / s / 1e12:,.1f}" if s > 0 else "-"
        lines.append(
            f"| {row['model']} | {row['length']} | {1000 * row['step_s']:,.1f} | "
            f"{args.batch * row['length'] / row['step_s']:,.0f} | {flops['attention'] / 1e12:,.3f} | "
            f"{1000 * totals['attention']:,.1f} | {rate(flops['attention'], totals['attention'])} | "
            f"{1000 * totals['matmul']:,.1f} | {other_flops / 1e12:,.3f} | {rate(other_flops, totals['matmul'])} | "
            f"{1000 * totals['other']:,.1f} | {rate(sum(flops.values()), row['step_s'])} |")
    for row in rows:
        lines += ["", f"## {row['model']} at {row['length']}: the ten longest kernels (ms, one step)", ""]
        lines += [f"- {1000 * seconds:,.2f}  {name[:140]}" for name, seconds in row["top"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="longformer,bert_sdpa,hf_longformer")
    parser.add_argument("--lengths", default="4k,16k")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2 layers x 384, 256 tokens, window 64")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = train_step.SIZES["minilm" if args.tiny else "base"]
    sizes = dataclasses.replace(sizes, layers=2) if args.tiny else sizes
    knobs = train_step.TINY_KNOBS if args.tiny else train_step.PAPER_KNOBS
    setup = train_step.Setup(device, torch.bfloat16 if device.type == "cuda" else torch.float32, sizes, knobs)
    lengths = [256] if args.tiny else train_step.parse_lengths(args.lengths)
    rows = []
    for length in lengths:
        for name in args.models.split(","):
            try:
                rows.append(measure(name, length, setup, args))
                train_step.free_memory(device)
            except Exception as error:  # an OOM of one model keeps the others
                print(f"{name} {length}: {train_step.describe(error)}", flush=True)
                train_step.free_memory(device)
            print(f"{name} {length} done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(rows, args, setup)
    (args.out / "base_profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
