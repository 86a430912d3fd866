"""What each GPU fast-path choice is worth: the same train step as benchmarks/train_step.py with one choice changed.

* BigBird (block 64): FlexAttention BlockMask tiles of 64 tokens (BigBird's blocks, the default where the kernels
  compile them) against 128-token tiles (two query blocks per tile: more tiles kept, most of them masked inside).
* Performer (m = d ln d): the torch.compile path ("compiled", the default on CUDA) against the eager PyTorch path
  ("blocked"), bidirectional (the masked-LM step) and causal (chunked prefix sums, chunk 128).

    python benchmarks/fast_path_ablation.py --out DIR                 # on a GPU, ~3 minutes
    python benchmarks/fast_path_ablation.py --lengths 4k,16k --out DIR

Writes DIR/fast_path_ablation.csv and .md (tokens/s = N / median step time, peak GiB as in train_step.py).
"""

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (benchmarks/train_step.py: the model builders and the timed step)

from hf_efficient.models.bigbird import modeling_bigbird  # noqa: E402

CASES = {  # name: (our train_step model, config overrides, BigBird tile forced or None)
    "bigbird, 64-token tiles (default)": ("bigbird", {}, None),
    "bigbird, 128-token tiles": ("bigbird", {}, 128),
    "performer, compiled (default)": ("performer", {"attention_backend": "compiled"}, None),
    "performer, blocked (eager)": ("performer", {"attention_backend": "blocked"}, None),
    "performer causal, compiled (default)": ("performer", {"attention_backend": "compiled", "is_causal": True}, None),
    "performer causal, blocked (eager)": ("performer", {"attention_backend": "blocked", "is_causal": True}, None),
}
CAUSAL_MAX_LENGTH = 16384  # the causal chunk loop takes seconds per step beyond


def write_report(rows: list[dict], lengths: list[int], out: Path) -> str:
    """The CSV and the markdown table of the rows so far (rewritten after every case, so a cut run keeps them)."""
    with open(out / "fast_path_ablation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "length", "status", "tokens_per_s", "step_ms", "peak_gib",
                                                    "first_call_s", "backend", "message"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Fast-path ablation: tokens/s / peak GiB ({torch.cuda.get_device_name()}, torch {torch.__version__}, "
             "bf16, 6 layers, MiniLM sizes, batch 1)", "",
             "| case | " + " | ".join(train_step.length_label(n) for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for name in dict.fromkeys(row["case"] for row in rows):
        cells = []
        for length in lengths:
            row = next((r for r in rows if r["case"] == name and r["length"] == length), None)
            if row is None:
                cells.append("-")
            elif row.get("status") == "ok":
                cells.append(f"{row['tokens_per_s']:,.0f} / {row['peak_gib']:.2f}")
            else:
                cells.append(row.get("status", "?"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Messages:"] + [f"- {r['case']} {r['length']}: {r['message']}" for r in rows if r.get("message")]
    report = "\n".join(lines) + "\n"
    (out / "fast_path_ablation.md").write_text(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4k,16k,64k")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = torch.device("cuda")
    setup = train_step.Setup(device, torch.bfloat16, train_step.Sizes(), train_step.PAPER_KNOBS)
    timing = argparse.Namespace(warmup=3, repeats=10, min_repeats=3, case_seconds=5.0)
    lengths = train_step.parse_lengths(args.lengths)
    args.out.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.recompile_limit = 256
    rows, original_tile = [], modeling_bigbird.flex_tile
    for name, (model, overrides, tile) in CASES.items():
        modeling_bigbird.flex_tile = original_tile if tile is None else (lambda block_size, query, t=tile: t)
        spec = dataclasses.replace(train_step.our_spec(model, overrides), name=name, label=lambda k, n=name: n)
        for length in lengths:
            record = {"case": name, "length": length}
            if overrides.get("is_causal") and length > CAUSAL_MAX_LENGTH:
                record |= {"status": "not run", "message": f"causal runs stop at {CAUSAL_MAX_LENGTH} tokens"}
            else:
                try:
                    record |= train_step.run_case(spec, length, setup, timing, check=False)
                except Exception as error:
                    record |= {"status": "OOM" if train_step.is_out_of_memory(error) else "error",
                               "message": train_step.describe(error)}
                train_step.free_memory(device)
            print(f"{name:40} {length:6}  {train_step.summary(record)}", flush=True)
            rows.append(record)
            write_report(rows, lengths, args.out)
    modeling_bigbird.flex_tile = original_tile
    print(write_report(rows, lengths, args.out))


if __name__ == "__main__":
    main()
