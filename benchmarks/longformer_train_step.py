"""Train-step speed and peak memory: EfficientLongformer vs transformers' Longformer vs dense BERT (SDPA).

MiniLM sizes (hidden 384, 12 heads, intermediate 1536, vocab 30522), window 512, batch 1, no global tokens,
dropout 0 everywhere (so our model takes its FlexAttention path on CUDA), at each sequence length N:

* layer: forward + backward of one layer on random hidden states (1, N, 384): our EfficientBlock around
  EfficientLongformerAttention, transformers' LongformerLayer, transformers' BertLayer with SDPA attention.
* model: one masked-LM train step of a 6-layer model: forward, one cross-entropy computed here for all three
  (labels on a random 15% of tokens), backward, AdamW step: EfficientLongformerForMaskedLM, LongformerForMaskedLM,
  BertForMaskedLM (SDPA).

Weights are cast with model.to(dtype) (bf16 on CUDA, fp32 on CPU; no autocast). The first call of each case is
timed apart (ours: torch.compile of flex + block mask, once per length, in the layer case), then warm-up, then
`repeats` steps timed with CUDA events: tokens/s = N / median. Peak = torch.cuda.max_memory_allocated over the
timed steps; OOM is recorded per case. Before our full model is timed at the smallest length, its fast path (flex
on CUDA, blocked on CPU) is checked against another (blocked on CUDA, reference on CPU) on the same input.

    python benchmarks/longformer_train_step.py --out results/                                 # the GPU run
    python benchmarks/longformer_train_step.py --device cpu --lengths 512 1024 --repeats 2   # CPU smoke test (2 layers)
"""

import argparse
import csv
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import BertConfig, BertForMaskedLM, LongformerConfig, LongformerForMaskedLM
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.longformer.modeling_longformer import LongformerLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hf_efficient import EfficientLongformerConfig, EfficientLongformerForMaskedLM  # noqa: E402
from hf_efficient.core.layers import EfficientBlock  # noqa: E402
from hf_efficient.models.longformer import EfficientLongformerAttention  # noqa: E402

SIZES = {"hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522}
WINDOW, MASKED_FRACTION = 512, 0.15
MODELS = {"ours": "EfficientLongformer", "hf_longformer": "HF Longformer", "bert_sdpa": "BERT (SDPA)"}


def make_config(name: str, layers: int, length: int):
    shared = dict(SIZES, num_hidden_layers=layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "ours":
        config = EfficientLongformerConfig(**shared, attention_window=WINDOW, max_position_embeddings=length,
                                           use_pooler=False)
    elif name == "hf_longformer":  # RoBERTa-style positions start at pad_token_id + 1, hence + 2
        config = LongformerConfig(**shared, attention_window=[WINDOW] * layers, max_position_embeddings=length + 2)
    else:
        config = BertConfig(**shared, max_position_embeddings=length)
    if name != "hf_longformer":  # Longformer has only its own attention; ours uses sdpa inside the blocked path
        config._attn_implementation = "sdpa"
    return config


def build_layer_step(name: str, length: int, device: torch.device, dtype: torch.dtype):
    """One layer's forward + backward on random hidden states (and a random output gradient)."""
    config = make_config(name, 1, length)
    layer_class = {"ours": lambda c: EfficientBlock(c, 0, EfficientLongformerAttention),
                   "hf_longformer": lambda c: LongformerLayer(c, layer_id=0), "bert_sdpa": lambda c: BertLayer(c, 0)}
    layer = layer_class[name](config).to(device, dtype).train()
    hidden = torch.randn(1, length, SIZES["hidden_size"], device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn_like(hidden)
    local_only = torch.zeros(1, length, device=device, dtype=torch.bool)
    # HF Longformer's layer takes the mask its model builds: 0 = local attention (no padding, no global tokens)
    longformer_inputs = {"attention_mask": local_only.to(dtype), "is_index_masked": local_only,
                         "is_index_global_attn": local_only, "is_global_attn": False}

    def step():
        layer.zero_grad(set_to_none=True)
        hidden.grad = None
        kwargs = {"ours": {"shared_state": {}}, "hf_longformer": longformer_inputs, "bert_sdpa": {}}[name]
        out = layer(hidden, **kwargs)
        (out[0] if isinstance(out, tuple) else out).backward(grad_out)

    return step, layer


def build_model_step(name: str, length: int, device: torch.device, dtype: torch.dtype, layers: int):
    """A masked-LM train step: forward, loss on a random 15% of tokens, backward, AdamW step."""
    model_class = {"ours": EfficientLongformerForMaskedLM, "hf_longformer": LongformerForMaskedLM,
                   "bert_sdpa": BertForMaskedLM}[name]
    model = model_class(make_config(name, layers, length)).to(device, dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, SIZES["vocab_size"], (1, length), generator=generator)  # no pad/special ids
    labels = input_ids.masked_fill(torch.rand(1, length, generator=generator) >= MASKED_FRACTION, -100)
    batch = {"input_ids": input_ids.to(device), "labels": labels.to(device)}

    def step():
        masked_lm_loss(model, batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model, batch


def masked_lm_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The same loss for every model (not each head's own): cross-entropy over the labelled 15%, in the run dtype."""
    logits = model(input_ids=batch["input_ids"]).logits
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100), logits


def timed_call(step, device: torch.device) -> float:
    """Seconds for one call: CUDA events around it on the GPU, a synchronized host clock elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    step()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1000


def check_backends(model, batch, device: torch.device) -> str:
    """Same weights, same input: the loss (and logits) of our fast path against a second path."""
    fast, other = ("flex", "blocked") if device.type == "cuda" else ("blocked", "reference")
    results = {}
    for backend in (fast, other):
        model.config.attention_backend = backend
        logits = masked_lm_loss(model, batch)[1].detach().float()  # the loss again in fp32, off these logits
        results[backend] = (F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item(), logits)
    model.config.attention_backend = "auto"
    (fast_loss, fast_logits), (other_loss, other_logits) = results[fast], results[other]
    relative = ((fast_logits - other_logits).norm() / other_logits.norm()).item()
    tolerance = 1e-2 if model.dtype == torch.bfloat16 else 1e-4  # relative; logits get 2x (6 layers of rounding)
    passed = abs(fast_loss - other_loss) <= tolerance * abs(other_loss) and relative <= 2 * tolerance
    return (f"backend check ({model.dtype}): loss {fast}={fast_loss:.6f} {other}={other_loss:.6f} (rel. tol "
            f"{tolerance:g}), logits rel. diff {relative:.2e} (tol {2 * tolerance:g}): {'PASS' if passed else 'FAIL'}")


def run_case(case: str, name: str, length: int, device, dtype, args, repeats: int, check: bool) -> dict:
    if case == "layer":
        built = build_layer_step(name, length, device, dtype)
    else:
        built = build_model_step(name, length, device, dtype, args.model_layers)
    step, module = built[0], built[1]
    record = {"first_call_s": timed_call(step, device)}
    for _ in range(args.warmup - 1):
        step()
    if name == "ours":
        attention = module.self_attn if case == "layer" else module.model.layers[0].self_attn
        record["backend"] = attention.backend(torch.empty(0, device=device), output_attentions=False)
        if check:
            record["check"] = check_backends(module, built[2], device)
            print(record["check"], flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # after warm-up: weights, optimizer state and one step's activations
    median = statistics.median(timed_call(step, device) for _ in range(repeats))
    record |= {"step_ms": 1000 * median, "tokens_per_s": length / median}
    record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return record


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device, dtype: torch.dtype, layers: int) -> list[str]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return [f"device: {device.type} ({gpu}); torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"transformers {transformers.__version__}; python {platform.python_version()}",
            f"dtype: {dtype} weights (model.to(dtype), no autocast); batch 1; window {WINDOW}; no global tokens; "
            f"hidden and attention dropout 0 (so our model takes its flex path on CUDA); "
            f"model = {layers} layers, the same cross-entropy for all (computed here, not by each head) on "
            f"{MASKED_FRACTION:.0%} of tokens, AdamW"]


def summary(record: dict) -> str:
    if "error" in record:
        return f"{record['error']} {record.get('message', '')}"
    parts = [f"first call {record['first_call_s']:.1f}s", f"step {record['step_ms']:.1f} ms (median of "
             f"{record['repeats']})", f"{record['tokens_per_s']:,.0f} tok/s", record.get("backend", "")]
    if record["peak_gib"] == record["peak_gib"]:  # not NaN: measured on CUDA
        parts.insert(3, f"peak {record['peak_gib']:.2f} GiB")
    return ", ".join(part for part in parts if part)


def format_cell(record: dict) -> str:
    if "error" in record:
        return f"{record['error']} | -"
    peak = "-" if record["peak_gib"] != record["peak_gib"] else f"{record['peak_gib']:.2f}"
    return f"{record['tokens_per_s']:,.0f} | {peak}"


def markdown_table(records: list[dict]) -> str:
    columns = " | ".join(f"{label} tok/s | GiB" for label in MODELS.values())
    header = f"| case | length | {columns} | ours / HF LF |"
    lines = [header, "|" + "---|" * (2 + 2 * len(MODELS) + 1)]
    for case, length in dict.fromkeys((r["case"], r["length"]) for r in records):
        row = {r["model"]: r for r in records if (r["case"], r["length"]) == (case, length)}
        ours, theirs = row.get("ours", {}), row.get("hf_longformer", {})
        ratio = (f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.1f}x"
                 if "tokens_per_s" in ours and "tokens_per_s" in theirs else "-")
        cells = " | ".join(format_cell(row[name]) if name in row else "- | -" for name in MODELS)
        lines.append(f"| {case} | {length} | {cells} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per case (halved above 8192 tokens)")
    parser.add_argument("--warmup", type=int, help="untimed steps per case, first call included (cuda 3, cpu 1)")
    parser.add_argument("--model-layers", type=int, help="layers of the full models (cuda 6; cpu 2, a smoke test)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    on_gpu = device.type == "cuda"
    args.warmup, args.model_layers = args.warmup or (3 if on_gpu else 1), args.model_layers or (6 if on_gpu else 2)
    torch._dynamo.config.recompile_limit = 64  # flex is compiled with static shapes: one graph per length
    torch.manual_seed(0)
    env = environment(device, dtype, args.model_layers)
    print("\n".join(env), flush=True)

    records, notes = [], []
    for length in sorted(args.lengths):
        repeats = args.repeats if length <= 8192 else max(1, args.repeats // 2)
        for case in ("layer", "model"):
            for name in args.models:
                check = case == "model" and name == "ours" and length == min(args.lengths)
                record = {"case": case, "length": length, "model": name, "repeats": repeats}
                start = time.perf_counter()
                try:
                    record |= run_case(case, name, length, device, dtype, args, repeats, check)
                except torch.cuda.OutOfMemoryError:
                    record["error"] = "OOM"
                except Exception as error:  # keep the run going; the message is printed and kept in the CSV
                    record["error"], record["message"] = "error", str(error).splitlines()[0][:300]
                free_memory(device)
                notes += [record[key] for key in ("check",) if key in record]
                elapsed = time.perf_counter() - start
                print(f"{case:5} {length:6} {name:13} {elapsed:6.1f}s  {summary(record)}", flush=True)
                records.append(record)

    used = {r["backend"] for r in records if "backend" in r}
    notes.append(f"our model's attention backend: {', '.join(sorted(used)) or 'n/a'}")
    first_calls = [f"{r['case']} {r['length']} {r['model']} {r['first_call_s']:.1f}s"
                   for r in records if "first_call_s" in r]
    notes.append("first call, untimed (one-time setup; ours on CUDA: torch.compile of flex and its block mask, "
                 "once per length in the layer case): " + "; ".join(first_calls))
    table = markdown_table(records)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["case", "length", "model", "tokens_per_s", "step_ms", "peak_gib", "first_call_s", "repeats",
              "backend", "error", "message"]
    with open(args.out / "longformer_train_step.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    report = "\n".join(["# Longformer train step", "", *[f"- {line}" for line in env + notes], "", table, ""])
    (args.out / "longformer_train_step.md").write_text(report)
    print("\n" + "\n".join(notes) + f"\nwritten to {args.out}\n\n" + table)


if __name__ == "__main__":
    main()
