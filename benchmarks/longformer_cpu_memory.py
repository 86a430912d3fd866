"""Peak CPU memory of one EfficientLongformer layer's forward + backward as the sequence grows (window fixed).

Each length runs in a fresh subprocess; the figure is the growth of the process's peak resident memory over its
baseline after building the layer (ru_maxrss), so it counts every activation the backward pass keeps. With a fixed
window the blocked path should grow linearly in N (O(N w)); the dense reference grows as N^2.

    python benchmarks/longformer_cpu_memory.py --lengths 2048 4096 8192 16384
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(backend: str, length: int, window: int) -> dict:
    from hf_efficient import EfficientLongformerConfig
    from hf_efficient.core.layers import EfficientBlock
    from hf_efficient.models.longformer import EfficientLongformerAttention

    torch.manual_seed(0)
    config = EfficientLongformerConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                                       num_hidden_layers=1, attention_window=window, max_position_embeddings=length,
                                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                       attention_backend=backend)
    config._attn_implementation = "sdpa"
    layer = EfficientBlock(config, 0, EfficientLongformerAttention).train()
    hidden = torch.randn(1, length, 384, requires_grad=True)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, _ = layer(hidden, shared_state={})
    out.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"backend": backend, "length": length, "window": window, "peak_growth_mib": (peak - baseline) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--backends", nargs="+", default=["blocked", "reference"])
    parser.add_argument("--max-reference-length", type=int, default=8192, help="the dense reference is O(N^2)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: backend length, in a subprocess
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.window)))
        return
    rows = []
    for backend in args.backends:
        for length in args.lengths:
            if backend == "reference" and length > args.max_reference_length:
                continue
            result = subprocess.run([sys.executable, __file__, "--window", str(args.window), "--one", backend,
                                     str(length)], capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("\n| backend | length | window | peak growth MiB | MiB per 1K tokens |\n|---|---|---|---|---|")
    for row in rows:
        per_k = row["peak_growth_mib"] / row["length"] * 1024
        print(f"| {row['backend']} | {row['length']} | {row['window']} | {row['peak_growth_mib']:.0f} | {per_k:.1f} |")


if __name__ == "__main__":
    main()
