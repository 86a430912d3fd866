"""Train-step time and peak memory of the Set Transformer encoder against dense SDPA, at growing set sizes.

One step = forward of the encoder over a batch of full sets (batch, n, input_size), the mean square of its output
as the loss, backward, AdamW step. Rows (same widths: --hidden, 4 heads, rFF of --hidden, 2 blocks):

* sab: EfficientSetTransformerModel, 2 SABs (full self-attention over the set, through torch's SDPA; O(n^2));
* isab16, isab32: 2 ISABs with m = 16 / 32 inducing points (two n x m maps, O(n m));
* bert_sdpa: the dense anchor, transformers' BertModel (`attn_implementation="sdpa"`, positions unused in
  effect) over `inputs_embeds` from the same linear input projection.

Each (model, size): a first step timed apart, a warm-up step, then timed steps (CUDA events on the GPU); the median
in ms and torch.cuda.max_memory_allocated over the timed steps (GiB; n/a on CPU). bf16 weights on CUDA, fp32 on
CPU. An out-of-memory is printed as OOM and the model's larger sizes are skipped. The table comes last.

    python benchmarks/set_scaling.py --device cuda                        # 1K ... 64K elements, batch 8 (~2 min)
    python benchmarks/set_scaling.py --device cpu --sizes 256,1024 --repeats 2
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from train_step import describe, free_memory, is_out_of_memory, parse_lengths, timed_call  # noqa: E402

import hf_efficient  # noqa: E402

MODELS = ("sab", "isab16", "isab32", "bert_sdpa")
INPUT_SIZE = 3  # e.g. points of a point cloud


class DenseEncoder(nn.Module):
    """transformers' BERT encoder over sets: the input projection of the set model, then BertModel(inputs_embeds)."""

    def __init__(self, config: transformers.BertConfig):
        super().__init__()
        self.input_proj = nn.Linear(INPUT_SIZE, config.hidden_size)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.bert(inputs_embeds=self.input_proj(input_features)).last_hidden_state


class SetEncoder(nn.Module):
    """The set model's encoder output as a plain tensor, as DenseEncoder gives it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=input_features).last_hidden_state


def build(name: str, size: int, hidden: int) -> nn.Module:
    widths = dict(hidden_size=hidden, num_attention_heads=4, intermediate_size=hidden, num_hidden_layers=2,
                  hidden_act="relu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "bert_sdpa":
        config = transformers.BertConfig(vocab_size=1, max_position_embeddings=size, type_vocab_size=1, **widths)
        config._attn_implementation = "sdpa"
        return DenseEncoder(config)
    block = dict(encoder_block="sab") if name == "sab" else dict(encoder_block="isab",
                                                                num_inducing_points=int(name[4:]))
    config = hf_efficient.EfficientSetTransformerConfig(input_size=INPUT_SIZE, **block, **widths)
    return SetEncoder(hf_efficient.EfficientSetTransformerModel(config, add_decoder=False))


def run_case(name: str, size: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    model = build(name, size, args.hidden).to(device, dtype).train()
    features = torch.randn(args.batch, size, INPUT_SIZE, device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model(features).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first = timed_call(step, device)
    timed_call(step, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    median = statistics.median(timed_call(step, device) for _ in range(args.repeats))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"status": "ok", "first_s": first, "step_ms": 1000 * median, "peak_gib": peak}


def cell(record: dict) -> str:
    if record["status"] != "ok":
        return record["status"]
    memory = "n/a" if record["peak_gib"] is None else f"{record['peak_gib']:.2f} GiB"
    return f"{record['step_ms']:.1f} ms / {memory}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--sizes", default="1k,4k,16k,64k", help="set sizes n (elements per set), e.g. 1k,4096")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case (the median is reported)")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown or 'empty list'}; use a comma list of {', '.join(MODELS)}")
    try:
        sizes = parse_lengths(args.sizes)
    except ValueError as error:
        parser.error(f"--sizes: {error}")
    for field in ("batch", "hidden", "repeats"):
        if getattr(args, field) < 1:
            parser.error(f"--{field} must be at least 1")
    if args.hidden % 4:
        parser.error(f"--hidden {args.hidden}: use a multiple of 4 (4 heads)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"# device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {dtype}, batch "
          f"{args.batch}, hidden {args.hidden}, torch {torch.__version__}, transformers {transformers.__version__}")
    results = {}
    for name in models:
        failed = None
        for size in sizes:
            if failed:
                results[name, size] = {"status": f"skipped ({failed} at a smaller size)"}
                continue
            try:
                results[name, size] = run_case(name, size, args, device, dtype)
            except Exception as error:  # an OOM ends this model's sizes; anything else is printed as an error
                failed = "OOM" if is_out_of_memory(error) else "error"
                results[name, size] = {"status": "OOM" if failed == "OOM" else f"error: {describe(error)}"}
            free_memory(device)
            print(f"{name} n={size}: {cell(results[name, size])}", flush=True)
    print(f"\n| model | {' | '.join(f'n={size}' for size in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for name in models:
        print(f"| {name} | {' | '.join(cell(results[name, size]) for size in sizes)} |")


if __name__ == "__main__":
    main()
