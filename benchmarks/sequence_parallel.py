"""Sequence parallelism past one GPU's memory: a masked-LM train step of a base-size EfficientLongformer (hidden 768,
12 layers, 12 heads, window 512, random weights, one global token) or, with `--model bigbird`, EfficientBigBird
(the same sizes, blocks of 64 tokens, 3 sliding + 3 random + 2 global blocks) on one GPU against the same sequence
split across the ranks of `torchrun` (hf_efficient.parallel).

1. check: at a small length in fp32, the split step's loss and summed gradients against one GPU's (max abs diff);
2. one GPU (rank 0, the normal path, others wait): growing lengths until one runs out of memory;
3. all GPUs, split: from the largest length that fit on one GPU upwards (an out-of-memory here ends the run, as the
   other ranks would wait in a collective; $OUT/sequence_parallel.json holds the rows so far, `--report` prints
   them).

A step is forward + backward (+ summed gradients when split) + AdamW, under bf16 autocast (flex on CUDA); after one
warm-up step (compiles) `--repeats` steps are timed. Each GPU's peak memory is torch.cuda.max_memory_allocated.
The table (length, GPUs, ms/step, peak GiB per GPU, tokens/s) is printed last.

    torchrun --nproc_per_node 2 benchmarks/sequence_parallel.py --out $OUT          # 2 GPUs
    torchrun --nproc_per_node 2 benchmarks/sequence_parallel.py --device cpu --tiny  # CPU smoke test (gloo)
    torchrun --nproc_per_node 2 benchmarks/sequence_parallel.py --model bigbird --out $OUT
    python benchmarks/sequence_parallel.py --report --out $OUT                       # the table of a stopped run
"""

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hf_efficient import (  # noqa: E402
    EfficientBigBirdConfig,
    EfficientBigBirdForMaskedLM,
    EfficientLongformerConfig,
    EfficientLongformerForMaskedLM,
)
from hf_efficient.models.bigbird.modeling_bigbird import _structural_flex_mask  # noqa: E402
from hf_efficient.parallel import sequence_parallel, shard_batch, sum_gradients, whole_loss  # noqa: E402

SIZES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522)
TINY_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
MODELS = {  # name: (config class, masked-LM class, base knobs, --tiny knobs, default lengths)
    "longformer": (EfficientLongformerConfig, EfficientLongformerForMaskedLM, dict(attention_window=512),
                   dict(attention_window=16), [65536, 131072, 196608, 262144, 393216]),
    "bigbird": (EfficientBigBirdConfig, EfficientBigBirdForMaskedLM,
                dict(block_size=64, num_sliding_blocks=3, num_random_blocks=3, num_global_blocks=2),
                dict(block_size=16, num_sliding_blocks=3, num_random_blocks=1, num_global_blocks=2),
                [65536, 131072, 196608, 262144, 393216]),
}
TINY_LENGTHS = [256, 512]
MASKED_FRACTION = 0.15


def make_model(name: str, tiny: bool, max_length: int, device: torch.device):
    config_class, model_class, base, small, _ = MODELS[name]
    sizes = {**TINY_SIZES, **small} if tiny else {**SIZES, **base}
    config = config_class(**sizes, max_position_embeddings=max_length, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, use_pooler=False)
    torch.manual_seed(0)  # the same weights on every rank
    with device:
        return model_class(config).train()


def make_batch(length: int, vocab: int, first_global: bool) -> dict[str, torch.Tensor]:
    """One row: random ids, labels on a random 15% (at least one per 1/8 of the row), the first token global
    (`first_global`: Longformer's; BigBird's global blocks are the row's first and last)."""
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(5, vocab, (1, length), generator=generator)
    labelled = torch.rand(1, length, generator=generator) < MASKED_FRACTION
    labelled[:, :: max(1, length // 8)] = True
    batch = {"input_ids": ids, "labels": torch.where(labelled, ids, -100)}
    if first_global:
        is_global = torch.zeros_like(ids)
        is_global[:, 0] = 1
        batch["global_attention_mask"] = is_global
    return batch


def model_batch(model, length: int) -> dict[str, torch.Tensor]:
    return make_batch(length, model.config.vocab_size, isinstance(model, EfficientLongformerForMaskedLM))


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def step(model, batch: dict, device: torch.device, split: bool, bf16: bool = True) -> torch.Tensor:
    """Forward + backward of the whole batch (one process) or of this rank's chunk (split), gradients summed."""
    model.zero_grad(set_to_none=True)
    if split:
        with sequence_parallel(model):
            inputs = {name: value.to(device) for name, value in shard_batch(batch).items()}
            with autocast(device, bf16):
                loss = model(**inputs).loss
            loss.backward()
        sum_gradients(model)
        return whole_loss(loss)
    inputs = {name: value.to(device) for name, value in batch.items()}
    with autocast(device, bf16):
        loss = model(**inputs).loss
    loss.backward()
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(model, length: int, device: torch.device, rank: int) -> None:
    """fp32: the split step's loss and summed gradients against the one-process step on the whole sequence."""
    batch = model_batch(model, length)
    loss = step(model, batch, device, split=False, bf16=False)
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    split_loss = step(model, batch, device, split=True, bf16=False)
    grad_diff = max(float((p.grad - expected[name]).abs().max()) for name, p in model.named_parameters()
                    if name in expected)
    grad_scale = max(float(g.abs().max()) for g in expected.values())
    if rank == 0:
        print(f"check at {length} tokens (fp32): loss one process {float(loss):.6f}, split {float(split_loss):.6f}, "
              f"max abs diff {abs(float(loss - split_loss)):.2e}; gradients max abs diff {grad_diff:.2e} "
              f"(largest gradient {grad_scale:.2e})", flush=True)
    model.zero_grad(set_to_none=True)


def measure(model, optimizer, length: int, device: torch.device, split: bool, repeats: int) -> dict:
    """Warm-up then `repeats` timed train steps -> ms/step, this process's peak GiB."""
    batch = model_batch(model, length)
    step(model, batch, device, split)
    optimizer.step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step(model, batch, device, split)
        optimizer.step()
    synchronize(device)
    ms = (time.perf_counter() - start) * 1000 / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"ms": ms, "peak_gib": peak}


def free(model) -> None:
    model.zero_grad(set_to_none=True)
    _structural_flex_mask.cache_clear()  # BigBird's BlockMasks of the last length, one per layer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save(rows: list[dict], out: Path) -> None:
    (out / "sequence_parallel.json").write_text(json.dumps(rows, indent=1))


def table(rows: list[dict]) -> str:
    lines = ["| length | GPUs | ms/step | peak GiB per GPU | tokens/s |", "|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.get("status") == "ok":
            peaks = "/".join(f"{p:.1f}" for p in row["peak_gib"]) if row["peak_gib"][0] == row["peak_gib"][0] else "-"
            lines.append(f"| {row['length']} | {row['gpus']} | {row['ms']:.0f} | {peaks} | "
                         f"{row['length'] * 1000 / row['ms']:.0f} |")
        else:
            lines.append(f"| {row['length']} | {row['gpus']} | {row['status']} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="longformer")
    parser.add_argument("--lengths", type=int, nargs="+",
                        help=f"ascending (default {MODELS['longformer'][-1]}; --tiny {TINY_LENGTHS})")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer hidden-64 model (smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-length", type=int, help="length of the fp32 check (default 4096; --tiny 128); 0: skip")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results/sequence_parallel")))
    parser.add_argument("--one-gpu", action="store_true", help="only the one-GPU rows (run with one process)")
    parser.add_argument("--report", action="store_true", help="print the table of $OUT/sequence_parallel.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(table(json.loads((args.out / "sequence_parallel.json").read_text())))
        return
    lengths = sorted(args.lengths or (TINY_LENGTHS if args.tiny else MODELS[args.model][-1]))
    check_length = args.check_length if args.check_length is not None else (128 if args.tiny else 4096)
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    if any(length % world for length in lengths):
        parser.error(f"every length must be a multiple of the {world} processes")
    model = make_model(args.model, args.tiny, max(lengths), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if rank == 0:
        print(f"torch {torch.__version__}, {args.model}, {world} processes on {args.device}, lengths {lengths}",
              flush=True)
    rows: list[dict] = []
    if check_length:
        check(model, check_length, device, rank)

    fits = 0  # one GPU: rank 0, the normal path, until out of memory
    if rank == 0:
        for length in lengths:
            try:
                result = measure(model, optimizer, length, device, split=False, repeats=args.repeats)
            except torch.cuda.OutOfMemoryError:
                rows.append({"length": length, "gpus": 1, "status": "out of memory"})
                free(model)
                print(f"1 GPU, {length}: out of memory", flush=True)
                break
            rows.append({"length": length, "gpus": 1, "status": "ok", "ms": result["ms"],
                         "peak_gib": [result["peak_gib"]]})
            fits = length
            save(rows, args.out)
            print(f"1 GPU, {length}: {result['ms']:.0f} ms/step, peak {result['peak_gib']:.1f} GiB", flush=True)
        free(model)
        save(rows, args.out)
    shared = [fits]
    dist.broadcast_object_list(shared, src=0)
    fits = shared[0]

    for length in [length for length in lengths if length >= fits and not args.one_gpu]:  # split, from the largest
        # that fit
        if rank == 0:  # what the table says if this length never finishes (out of memory on a rank, killed)
            save([*rows, {"length": length, "gpus": world, "status": "did not finish (see the log)"}], args.out)
        try:
            result = measure(model, optimizer, length, device, split=True, repeats=args.repeats)
        except torch.cuda.OutOfMemoryError:  # the other ranks wait in a collective: record, then end the run
            print(f"{world} GPUs, {length}: out of memory on rank {rank}", flush=True)
            raise
        peaks = [None] * world
        dist.all_gather_object(peaks, result["peak_gib"])
        rows.append({"length": length, "gpus": world, "status": "ok", "ms": result["ms"], "peak_gib": peaks})
        if rank == 0:
            save(rows, args.out)
            print(f"{world} GPUs, {length}: {result['ms']:.0f} ms/step, peak {max(peaks):.1f} GiB", flush=True)
        free(model)
    if rank == 0:
        print(table(rows), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
