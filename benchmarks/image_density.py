"""Held-out bits/dim of image models trained from scratch: the image variants beside a dense-attention decoder of the
same size (transformers' GPT2LMHeadModel over the same tokens, the anchor).

Every model reads the same tokens (EfficientImageProcessor: the bos, then the sub-pixels in raster order;
vocabulary num_levels + 1, 1 + H*W*C positions) of one set of benchmarks/image_data.py and trains the same way:
AdamW (betas 0.9/0.95), linear warmup then cosine decay over --steps (or over --seconds of training), gradient norm
clipped at 1, batches drawn with a fixed seed, bf16 autocast on CUDA (fp32 weights; fp32 on CPU). Held-out bits/dim
= the mean negative log-likelihood (nats) of every sub-pixel of ALL held-out images / ln 2, the softmax taken over
the num_levels intensity logits (the bos logit left out: no image holds a bos; the image variants mask it, GPT-2
learns it away). Train time includes the first step (compilation); tokens/s counts the steps after it.

Models are built from specs (SPECS: a model_type and its knobs) through AutoConfig.for_model and
AutoModelForCausalLM.from_config, so this script imports no model class; a spec whose model_type is not installed
is refused by name. Writes image_density_<data>.csv and .md to --out and, with --samples K, a PNG grid of K images
per model drawn with generate(do_sample=True) (image_density_<data>_<model>.png).

    python benchmarks/image_density.py --device cpu --steps 5 --hidden 16 --layers 2 --out /tmp/smoke   # smoke
    python benchmarks/image_data.py --write benchmarks/.data/images                 # where scikit-learn is
    python benchmarks/image_density.py --data digits --cache benchmarks/.data/images --steps 3000 --samples 36
"""

import argparse
import csv
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import hf_efficient  # noqa: F401  (registers the efficient_* model types with the Auto classes)
from hf_efficient.data.image_processing import image_grid, sample_images

sys.path.insert(0, str(Path(__file__).resolve().parent))  # image_data.py beside this file (also under runpy)
from image_data import NAMES, ImageSet, load  # noqa: E402


@dataclass(frozen=True)
class Spec:
    model_type: str
    knobs: dict = field(default_factory=dict)


SPECS = {
    "gpt2": Spec("gpt2"),  # the dense anchor
    "axial": Spec("efficient_axial", {"is_causal": True}),  # the decoder (the default config is the encoder)
    "image_transformer_1d": Spec("efficient_image_transformer", {"attention_type": "local_1d"}),
    "image_transformer_2d": Spec("efficient_image_transformer", {"attention_type": "local_2d"}),
}
FIELDS = ["model", "model_type", "data", "status", "params", "steps", "train_s", "first_step_s", "tokens_per_s",
          "peak_gib", "train_bits_per_dim", "held_out_bits_per_dim", "held_out_images", "sample_png", "device",
          "dtype", "torch", "transformers", "error"]


def installed(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def build_config(name: str, data: ImageSet, args, overrides: dict):
    """The spec's config at the run's size, over the set's tokens."""
    spec = SPECS[name]
    if not installed(spec.model_type):
        raise ValueError(f"model {name}: model_type {spec.model_type!r} is not installed (import hf_efficient "
                         "registers every efficient_* variant of this checkout): leave it out of --models.")
    if spec.model_type == "gpt2":
        if args.class_conditional:
            raise ValueError("gpt2 has no class input: leave out --class-conditional or leave gpt2 out of --models.")
        fields = dict(vocab_size=data.num_levels + 1, n_positions=1 + data.tokens, n_embd=args.hidden,
                      n_layer=args.layers, n_head=args.heads, n_inner=args.intermediate,
                      bos_token_id=data.num_levels, eos_token_id=None, resid_pdrop=args.dropout,
                      embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    else:
        fields = dict(image_size=data.image_size, num_channels=data.num_channels, num_levels=data.num_levels,
                      num_classes=data.num_classes if args.class_conditional else 0, hidden_size=args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      intermediate_size=args.intermediate, hidden_dropout_prob=args.dropout,
                      attention_probs_dropout_prob=args.dropout)
    known = AutoConfig.for_model(spec.model_type).to_dict()
    unknown = sorted((set(spec.knobs) | set(overrides)) - set(known))
    if unknown:
        raise ValueError(f"model {name}: {spec.model_type} has no config fields {unknown}.")
    return AutoConfig.for_model(spec.model_type, **{**fields, **spec.knobs, **overrides})


def nll_sum(model, input_ids, class_labels, num_levels: int) -> torch.Tensor:
    """Summed negative log-likelihood (nats, fp32) of every sub-pixel of `input_ids` (bos first), over the
    num_levels intensity logits."""
    extra = {} if class_labels is None else {"class_labels": class_labels}
    logits = model(input_ids=input_ids, **extra).logits[:, :-1, :num_levels].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, num_levels), input_ids[:, 1:].reshape(-1),
                                             reduction="sum")


def held_out_bits_per_dim(model, input_ids, class_labels, num_levels: int, batch: int, device, autocast) -> float:
    """Mean NLL per sub-pixel of all `input_ids` rows / ln 2."""
    model.eval()
    total = 0.0
    with torch.no_grad(), autocast:
        for start in range(0, len(input_ids), batch):
            labels = None if class_labels is None else class_labels[start:start + batch].to(device)
            total += nll_sum(model, input_ids[start:start + batch].to(device), labels, num_levels).item()
    model.train()
    return total / (input_ids.shape[0] * (input_ids.shape[1] - 1)) / math.log(2)


def learning_rate(args, step: int, progress: float) -> float:
    return args.lr * min(1.0, (step + 1) / max(args.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(name: str, data: ImageSet, tokens: dict, args, device: torch.device, overrides: dict) -> dict:
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(build_config(name, data, args, overrides)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    train_ids, train_labels = (None if t is None else t.to(device) for t in tokens["train"])
    generator = torch.Generator().manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    row = dict(model=name, model_type=SPECS[name].model_type, params=sum(p.numel() for p in model.parameters()))
    losses, step, elapsed, first = [], 0, 0.0, None
    start = time.perf_counter()
    while (step < args.steps) if args.steps else (elapsed < args.seconds):
        progress = step / args.steps if args.steps else elapsed / args.seconds
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step, progress)
        index = torch.randint(len(train_ids), (args.batch,), generator=generator).to(device)
        labels = None if train_labels is None else train_labels[index]
        batch = train_ids[index]
        with autocast:
            loss = nll_sum(model, batch, labels, data.num_levels) / (batch.shape[0] * data.tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.detach())
        if step == 1 or step % 10 == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            first = elapsed if first is None else first
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tail = torch.stack(losses[-max(1, len(losses) // 10):]).float().mean().item()  # the last tenth of the steps
    row.update(steps=step, train_s=round(seconds, 3), first_step_s=round(first, 3),
               tokens_per_s=round((step - 1) * args.batch * data.tokens / (seconds - first)) if step > 1 else "",
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else "",
               train_bits_per_dim=round(tail / math.log(2), 4))
    test_ids, test_labels = tokens["test"]
    row["held_out_bits_per_dim"] = round(held_out_bits_per_dim(model, test_ids, test_labels, data.num_levels,
                                                               args.eval_batch, device, autocast), 4)
    row["held_out_images"] = len(test_ids)
    if args.samples:
        labels = torch.arange(args.samples) % data.num_classes if args.class_conditional else None
        images = sample_images(model.eval(), data.processor(), args.samples, class_labels=labels)
        path = Path(args.out) / f"image_density_{data.name}_{name}.png"
        scale = max(1, 64 // max(data.image_size))
        image_grid(images, columns=data.num_classes if args.class_conditional else None, scale=scale).save(path)
        row["sample_png"] = path.name
    return row


def parse_overrides(items: list[str], models: list[str]) -> dict[str, dict]:
    """--set MODEL.KEY=VALUE (values JSON when they parse) -> {model: {key: value}}."""
    overrides = {name: {} for name in models}
    for item in items:
        target, equals, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not equals or not dot or name not in overrides:
            raise ValueError(f"--set {item!r}: give MODEL.KEY=VALUE with MODEL one of --models {models}.")
        try:
            overrides[name][key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name][key] = value
    return overrides


def write_results(rows: list[dict], data: ImageSet, args, out: Path) -> str:
    with open(out / f"image_density_{data.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows([{key: row.get(key, "") for key in FIELDS} for row in rows])
    lines = [f"# Held-out bits/dim on {data.name}", "",
             f"{len(data.train_images)} train / {len(data.test_images)} held-out images of "
             f"{data.image_size[0]}x{data.image_size[1]}x{data.num_channels}, {data.num_levels} levels"
             f"{', class-conditional' if args.class_conditional else ''}; hidden {args.hidden}, {args.layers} layers, "
             f"{args.heads} heads, intermediate {args.intermediate}; batch {args.batch}, lr {args.lr}, warmup "
             f"{args.warmup}, {f'{args.steps} steps' if args.steps else f'{args.seconds} s per model'}; "
             f"{rows[0]['device'] if rows else args.device}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}.", "",
             "| model | params | steps | train s | tokens/s | peak GiB | train bits/dim | held-out bits/dim |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['status']}: {row['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {row['model']} | {row['params']:,} | {row['steps']} | {row['train_s']:.1f} | "
                     f"{row['tokens_per_s']} | {row['peak_gib'] or 'n.a.'} | {row['train_bits_per_dim']:.4f} | "
                     f"{row['held_out_bits_per_dim']:.4f} |")
    text = "\n".join(lines) + "\n"
    (out / f"image_density_{data.name}.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=NAMES, default="digits")
    parser.add_argument("--cache", default=None, metavar="DIR", help="the .npz folder of image_data.py")
    parser.add_argument("--crop-size", type=int, default=32, help="crops: side of the crops (default: 32)")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"specs among {sorted(SPECS)} (default: those whose model_type is installed)")
    parser.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                        help="a config field of one model, e.g. --set image_transformer_1d.query_block_length=64")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default: 2000)")
    parser.add_argument("--seconds", type=float, default=None, help="instead of --steps: training seconds per model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None, help="(default: 4 x hidden)")
    parser.add_argument("--class-conditional", action="store_true", help="models get the set's class labels")
    parser.add_argument("--samples", type=int, default=0, help="images to sample per model into a PNG grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.steps is not None and args.seconds is not None:
        parser.error("give --steps or --seconds, not both")
    args.steps = 2000 if args.steps is None and args.seconds is None else args.steps
    for option in ("steps", "seconds", "batch", "eval_batch", "hidden", "layers", "heads"):
        if getattr(args, option) is not None and getattr(args, option) <= 0:
            parser.error(f"--{option.replace('_', '-')} must be positive")
    args.intermediate = args.intermediate or 4 * args.hidden
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    models = args.models or [name for name, spec in SPECS.items() if installed(spec.model_type)]
    unknown = [name for name in models if name not in SPECS]
    try:
        if unknown:
            raise ValueError(f"no model specs {unknown}; the specs are {sorted(SPECS)}.")
        overrides = parse_overrides(args.set, models)
        data = load(args.data, args.cache, args.crop_size)
        if args.class_conditional and not data.num_classes:
            raise ValueError(f"the {args.data} set has no classes: leave out --class-conditional.")
        for name in models:  # refuse a bad spec before any training
            build_config(name, data, args, overrides[name])
    except (ValueError, ImportError) as error:
        parser.error(str(error))
    processor = data.processor()
    tokens = {part: (processor(getattr(data, f"{part}_images"))["input_ids"],
                     torch.from_numpy(getattr(data, f"{part}_labels")) if args.class_conditional else None)
              for part in ("train", "test")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment = dict(data=data.name, device=torch.cuda.get_device_name(device) if device.type == "cuda"
                       else platform.processor() or "cpu", dtype="bf16 autocast" if device.type == "cuda" else "fp32",
                       torch=torch.__version__, transformers=transformers.__version__)
    rows = []
    for name in models:
        try:
            row = {**train(name, data, tokens, args, device, overrides[name]), "status": "ok"}
        except torch.OutOfMemoryError as error:
            row = dict(model=name, model_type=SPECS[name].model_type, status="oom", error=str(error).split("\n")[0])
        except Exception as error:  # one failing model does not lose the others' rows
            row = dict(model=name, model_type=SPECS[name].model_type, status="error", error=repr(error)[:300])
        rows.append({**row, **environment})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(write_results(rows, data, args, out))


if __name__ == "__main__":
    main()
