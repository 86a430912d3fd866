"""Transformer-XL on long streams: training in segments with memory, and generating long continuations, against a
dense SDPA decoder of the same size whose cost grows with the whole context.

Sizes: MiniLM's (hidden 384, 12 heads, intermediate 1536, vocab 30522, 6 layers), dropout 0, bf16 weights on CUDA
(fp32 on CPU), batch = --streams parallel streams. Rows:

* train: one AdamW step per segment over a random token stream of --stream-tokens per stream, read in order
  (SegmentStreams); tokens/s = the stream's tokens / the time of its steps after --warmup segments; peak =
  torch.cuda.max_memory_allocated over the timed steps.
  - ours: Transformer-XL, segments of --segment tokens, a memory of --mem-len (carried, detached);
  - dense@segment: the dense decoder on the same segments, no memory (context = the segment);
  - dense@segment+mem: the dense decoder on segments of --segment + --mem-len tokens (Transformer-XL's span at the
    end of a segment);
  - dense@stream: the dense decoder on the whole stream as one sequence (cost grows with the whole context; OOM is
    recorded as such).
* generate: greedy decoding of --generate tokens after a 16-token prompt (min_new_tokens = max_new_tokens):
  - ours: Transformer-XL with its memory cache (--mem-len states per layer, O(mem_len) per token);
  - dense: the dense decoder with a DynamicCache (keys/values of every earlier token, O(context) per token).

    python benchmarks/transformer_xl_stream.py --out benchmarks/results/transformer_xl    # on a GPU
    python benchmarks/transformer_xl_stream.py --tiny --device cpu --out /tmp/txl_smoke    # CPU smoke test
"""

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import hf_efficient  # noqa: E402
from hf_efficient.core import EfficientConfig, EfficientForCausalLM  # noqa: E402
from hf_efficient.core.cache_argument import returned_cache  # noqa: E402
from hf_efficient.segment_training import SegmentStreams  # noqa: E402

FIELDS = ["flow", "model", "segment", "mem_len", "context", "streams", "tokens", "status", "tokens_per_s",
          "ms_per_step", "peak_gib", "device", "dtype"]
FULL = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, vocab_size=30522, num_hidden_layers=6)
TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=1000, num_hidden_layers=2)


def txl(sizes: dict, mem_len: int) -> torch.nn.Module:
    return hf_efficient.EfficientTransformerXLForCausalLM(hf_efficient.EfficientTransformerXLConfig(
        **sizes, mem_len=mem_len, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=None))


def dense(sizes: dict, length: int) -> torch.nn.Module:
    """A GPT-2-style pre-norm decoder with rotary positions: full causal attention through SDPA."""
    config = EfficientConfig(**sizes, is_causal=True, norm_position="pre", position_embedding_type="rotary",
                             type_vocab_size=0, embedding_norm=False, use_pooler=False, masked_lm_transform=False,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=None,
                             max_position_embeddings=max(length, 2))
    config._attn_implementation = "sdpa"
    return EfficientForCausalLM(config)


class Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def train_rows(args, sizes: dict, device: torch.device, dtype: torch.dtype, clock: Clock) -> list[dict]:
    total = args.streams * args.stream_tokens
    stream = torch.randint(0, sizes["vocab_size"], (total,), generator=torch.Generator().manual_seed(0))
    cases = [("ours: transformer_xl", args.segment, args.mem_len, True),
             ("dense@segment", args.segment, 0, False),
             ("dense@segment+mem", args.segment + args.mem_len, 0, False),
             ("dense@stream", args.stream_tokens, 0, False)]
    rows = []
    for name, segment, mem_len, recurrent in cases:
        row = dict(flow="train", model=name, segment=segment, mem_len=mem_len,
                   context=segment + mem_len if recurrent else segment, streams=args.streams, tokens=total)
        model = None
        try:
            torch.manual_seed(0)
            model = (txl(sizes, mem_len) if recurrent else dense(sizes, segment)).to(device, dtype).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            data = SegmentStreams(stream, args.streams, segment)
            cache, times = None, []
            clock.reset_peak()
            for index in range(data.num_segments):
                batch = torch.stack([data[index * args.streams + b]["input_ids"] for b in range(args.streams)])
                batch = batch.to(device)
                if index == args.warmup:
                    clock.reset_peak()
                clock.sync()
                start = time.perf_counter()
                kwargs = {"cache": cache, "use_cache": True} if recurrent else {"use_cache": False}
                out = model(input_ids=batch, labels=batch, **kwargs)
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                cache = returned_cache(out) if recurrent else None
                clock.sync()
                times.append(time.perf_counter() - start)
            timed = times[args.warmup:] or times
            row.update(status="ok", ms_per_step=round(1000 * statistics.median(timed), 3),
                       tokens_per_s=round(segment * args.streams / statistics.median(timed), 1),
                       peak_gib=clock.peak_gib())
        except torch.OutOfMemoryError:
            row.update(status="OOM")
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
    return rows


def generate_rows(args, sizes: dict, device: torch.device, dtype: torch.dtype, clock: Clock) -> list[dict]:
    prompt = torch.randint(0, sizes["vocab_size"], (args.streams, 16), generator=torch.Generator().manual_seed(1))
    rows = []
    for name in ("ours: transformer_xl", "dense"):
        recurrent = name.startswith("ours")
        row = dict(flow="generate", model=name, segment=1, mem_len=args.mem_len if recurrent else 0,
                   context=args.mem_len + 1 if recurrent else 16 + args.generate, streams=args.streams,
                   tokens=args.generate * args.streams)
        model = None
        try:
            torch.manual_seed(0)
            model = (txl(sizes, args.mem_len) if recurrent else dense(sizes, 16 + args.generate)).to(device, dtype)
            model.eval()
            settings = dict(max_new_tokens=args.generate, min_new_tokens=args.generate, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
            with torch.no_grad():
                model.generate(prompt.to(device), **{**settings, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
                clock.reset_peak()
                clock.sync()
                start = time.perf_counter()
                model.generate(prompt.to(device), **settings)
                clock.sync()
            seconds = time.perf_counter() - start
            row.update(status="ok", tokens_per_s=round(args.generate * args.streams / seconds, 1),
                       ms_per_step=round(1000 * seconds / args.generate, 3), peak_gib=clock.peak_gib())
        except torch.OutOfMemoryError:
            row.update(status="OOM")
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and lengths (a CPU smoke test)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--segment", type=int, default=None, help="default 512 (tiny: 32)")
    parser.add_argument("--mem-len", type=int, default=None, help="default 512 (tiny: 32)")
    parser.add_argument("--stream-tokens", type=int, default=None, help="tokens per stream; default 16384 (tiny: 256)")
    parser.add_argument("--generate", type=int, default=None, help="default 8192 (tiny: 48)")
    parser.add_argument("--warmup", type=int, default=2, help="segments not timed")
    parser.add_argument("--flows", default="train,generate")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    defaults = (32, 32, 256, 48) if args.tiny else (512, 512, 16384, 8192)
    for name, value in zip(("segment", "mem_len", "stream_tokens", "generate"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.stream_tokens < args.segment * (args.warmup + 1):
        parser.error(f"--stream-tokens {args.stream_tokens} leaves no timed segment after {args.warmup} warm-up "
                     f"segments of {args.segment}; give more tokens or fewer warm-up segments.")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes, clock = (TINY if args.tiny else FULL), Clock(device)
    rows = []
    flows = args.flows.split(",")
    if "train" in flows:
        rows += train_rows(args, sizes, device, dtype, clock)
    if "generate" in flows:
        rows += generate_rows(args, sizes, device, dtype, clock)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for row in rows:
        row.update(device=name, dtype=str(dtype).removeprefix("torch."))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "transformer_xl_stream.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| flow | model | segment | mem_len | context | tokens/s | ms/step | peak GiB | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        peak = row.get("peak_gib")
        lines.append(f"| {row['flow']} | {row['model']} | {row['segment']} | {row['mem_len']} | {row['context']} | "
                     f"{row.get('tokens_per_s', '')} | {row.get('ms_per_step', '')} | "
                     f"{'' if peak is None else f'{peak:.2f}'} | {row['status']} |")
    (args.out / "transformer_xl_stream.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
