"""The Set Transformer paper's synthetic task kinds, with a generator of our own, training ISAB against SAB encoders.

Tasks (sets of random sizes in [2, --max-size], padded in a batch with an attention_mask):
  max     one number per element, uniform in [0, 1); the target is the set's largest (regression, num_labels=1;
          metric: mean absolute error, lower is better)
  unique  a set holds k distinct prototypes of a pool of POOL random vectors (k uniform in [1, min(POOL, size)]),
          each at least once, the other elements drawn among those k (plus small noise on every element); the
          target is k (classification over 1..POOL; metric: accuracy; the constant's is about 1 / POOL)

Each row trains EfficientSetTransformerForSequenceClassification (PMA with one seed, one decoder SAB) from scratch
with Adam, then evaluates on held-out batches drawn with another seed. "baseline" is the best constant prediction
(the training targets' median for max, the most frequent count for unique), so a model that learned beats it.

    python benchmarks/set_tasks.py --device cpu --steps 1000 --max-size 20      # ~2 min a row on 1 CPU core
    python benchmarks/set_tasks.py --device cuda --steps 3000 --max-size 200 --hidden 128 --batch 64   # ~3 min
    python benchmarks/set_tasks.py --device cuda --steps 2000 --max-size 200 --hidden 128 --batch 64 --no-layer-norm
"""

import argparse
import sys
import time

import torch

import hf_efficient

TASKS = ("max", "unique")
POOL = 10  # prototypes of the unique-counting task
UNIQUE_FEATURES = 8


def make_batch(task: str, batch: int, max_size: int, generator: torch.Generator, prototypes: torch.Tensor):
    """(input_features (batch, max_size, d), attention_mask (batch, max_size), labels)."""
    sizes = torch.randint(2, max_size + 1, (batch,), generator=generator)
    mask = (torch.arange(max_size)[None, :] < sizes[:, None]).long()
    if task == "max":
        values = torch.rand(batch, max_size, 1, generator=generator)
        labels = values[..., 0].masked_fill(mask == 0, 0.0).amax(-1)
        return values, mask, labels
    # k distinct prototypes per set, k uniform in [1, min(POOL, size)]: each of them once, then draws among them
    distinct = 1 + (torch.rand(batch, generator=generator) * sizes.clamp(max=POOL)).long()
    chosen = torch.rand(batch, POOL, generator=generator).argsort(-1)  # a random order of the prototypes per set
    slots = (torch.rand(batch, max_size, generator=generator) * distinct[:, None]).long()
    slots = torch.where(torch.arange(max_size) < distinct[:, None], torch.arange(max_size), slots)
    picks = chosen.gather(1, slots.clamp(max=POOL - 1))
    features = prototypes[picks] + 0.05 * torch.randn(batch, max_size, UNIQUE_FEATURES, generator=generator)
    present = torch.zeros(batch, POOL).scatter_add_(1, picks.masked_fill(mask == 0, 0), mask.float())
    labels = (present > 0).sum(-1) - 1  # classes 0..POOL-1 for counts 1..POOL
    return features, mask, labels


def build(task: str, encoder: str, args) -> torch.nn.Module:
    config = hf_efficient.EfficientSetTransformerConfig(
        input_size=1 if task == "max" else UNIQUE_FEATURES, hidden_size=args.hidden, intermediate_size=args.hidden,
        num_attention_heads=4, num_hidden_layers=2, encoder_block=encoder, num_inducing_points=args.inducing,
        num_seeds=1, num_decoder_layers=1, num_labels=1 if task == "max" else POOL, use_layer_norm=args.layer_norm,
        problem_type="regression" if task == "max" else "single_label_classification")
    return hf_efficient.EfficientSetTransformerForSequenceClassification(config)


def evaluate(model, batches, task: str) -> float:
    model.eval()
    errors, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for features, mask, labels in batches:
            logits = model(input_features=features, attention_mask=mask).logits
            if task == "max":
                errors += (logits[:, 0] - labels).abs().sum().item()
            else:
                correct += (logits.argmax(-1) == labels).sum().item()
            count += labels.shape[0]
    model.train()
    return errors / count if task == "max" else correct / count


def baseline(task: str, labels: torch.Tensor, batches) -> float:
    """The metric of the best constant prediction, fitted on `labels` (training targets)."""
    targets = torch.cat([batch[2] for batch in batches])
    if task == "max":
        return (targets - labels.float().median()).abs().mean().item()
    return (targets == labels.mode().values).float().mean().item()


def run(task: str, encoder: str, args, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    prototypes = torch.randn(POOL, UNIQUE_FEATURES, generator=torch.Generator().manual_seed(args.seed))
    model = build(task, encoder, args)
    with torch.no_grad():  # an init ablation: redraw the inducing points / seeds at another scale
        for name, parameter in model.named_parameters():
            std = args.inducing_std if name.endswith("inducing_points") else args.seeds_std if name.endswith(
                "seeds") else None
            if std is not None:
                parameter.normal_(0.0, std)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train = torch.Generator().manual_seed(args.seed + 1)
    held_out = torch.Generator().manual_seed(args.seed + 2)
    eval_batches = [tuple(t.to(device) for t in make_batch(task, args.batch, args.max_size, held_out, prototypes))
                    for _ in range(args.eval_batches)]
    seen, losses = [], []
    start = time.perf_counter()
    for _ in range(args.steps):
        features, mask, labels = (t.to(device) for t in make_batch(task, args.batch, args.max_size, train, prototypes))
        seen.append(labels.cpu())
        loss = model(input_features=features, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return dict(task=task, encoder=encoder, params=sum(p.numel() for p in model.parameters()), steps=args.steps,
                seconds=seconds, metric=evaluate(model, eval_batches, task),
                last_train_loss=torch.stack(losses[-100:]).mean().item(),
                baseline=baseline(task, torch.cat(seen), [[t.cpu() for t in b] for b in eval_batches]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-size", type=int, default=30, help="largest set (sizes are uniform in [2, this])")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--inducing", type=int, default=8, help="ISAB's inducing points")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inducing-std", type=float, default=None,
                        help="redraw ISAB's inducing points N(0, this) (default: the model's init)")
    parser.add_argument("--seeds-std", type=float, default=None,
                        help="redraw PMA's seeds N(0, this) (default: the model's init)")
    parser.add_argument("--no-layer-norm", dest="layer_norm", action="store_false",
                        help="MABs without their layer norms (use_layer_norm=False, the authors' code's default)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "hidden", "inducing", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_size < 2:
        parser.error("--max-size must be at least 2 (sets of 2 or more elements)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    print(f"layer norms {'on' if args.layer_norm else 'off'}, hidden {args.hidden}, batch {args.batch}, sets of 2 to "
          f"{args.max_size}, lr {args.lr}, init std of inducing points / seeds: "
          f"{args.inducing_std or 'default'} / {args.seeds_std or 'default'}")
    print("| task | encoder | parameters | steps | train s | train loss (last 100) | metric | constant baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for encoder in ("isab", "sab"):
            row = run(task, encoder, args, device)
            name = "MAE (lower is better)" if task == "max" else "accuracy"
            print(f"| {task} | {encoder}{f' (m={args.inducing})' if encoder == 'isab' else ''} | {row['params']} "
                  f"| {row['steps']} | {row['seconds']:.1f} | {row['last_train_loss']:.4g} "
                  f"| {name} {row['metric']:.4f} | {row['baseline']:.4f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
