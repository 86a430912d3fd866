"""Data-parallel fine-tuning of a converted long-document classifier under torchrun: one process against DDP and
FSDP on several, at the same global batch (the loss curves must agree) and at the same per-process batch (the
scaling figure).

One run = one `torchrun` launch of this script: transformers' `Trainer` fine-tunes `--model` (a folder written by
`hf-efficient convert`, loaded in fp32, trained under bf16 autocast on CUDA) for sequence classification on the
NewsArticles prepared by `padded_finetune.py --prepare` (tokenized, truncated at 4096; each batch padded to its
longest by `DataCollatorWithPadding`), AdamW at a constant learning rate, seed 0, logging the loss of every step.
With N processes and per-process batch b the global batch is N b; Trainer's sharded sampler gives the N processes
the same articles per step that one process with batch N b sees, so the curves are comparable step by step.
`--fsdp` shards the model with Trainer's FSDP (`full_shard auto_wrap`, one unit per `EfficientBlock`).
`--sampling` picks Trainer's `train_sampling_strategy`: with articles of varying length a DDP step lasts as long as its
slowest rank's batch, and `group_by_length` / `batch_rebalance` (cost-balanced batches across the ranks) are
transformers' answers; `--pad-to N` pads every batch to N tokens (fixed shapes: the scaling of the compute alone).

Rank 0 writes OUT/run_LABEL.json: per-step losses and CUDA-synchronised step times, samples/s over the steps after
--warmup-steps (the median step), the peak GPU memory of the busiest rank. `--report OUT` writes OUT/distributed.md
from those files: each run's loss curve against the one-process run of the same global batch, and throughput
against one process at the same per-process batch.

    python benchmarks/padded_finetune.py --prepare benchmarks/.data/news      # CPU, once
    hf-efficient convert --to longformer --max-length 4096 --head sequence_classification --out DIR
    torchrun --nproc_per_node 1 benchmarks/distributed_finetune.py --model DIR --data benchmarks/.data/news \
        --batch 8 --label 1gpu_b8 --out OUT
    torchrun --nproc_per_node 2 benchmarks/distributed_finetune.py ... --batch 4 --label ddp_b4 --out OUT
    torchrun --nproc_per_node 2 benchmarks/distributed_finetune.py ... --batch 4 --fsdp --label fsdp_b4 --out OUT
    python benchmarks/distributed_finetune.py --report OUT
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from padded_finetune import Articles, StepProfiler, StepTimer  # noqa: E402

import hf_efficient  # noqa: E402, F401  (registers the efficient_* model types)


class LossLog(transformers.TrainerCallback):
    """The loss Trainer logs at every step (averaged over the processes)."""

    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def train(args: argparse.Namespace) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available()
    data = Articles(args.data)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.data)
    config = transformers.AutoConfig.from_pretrained(args.model, num_labels=data.num_labels)
    if args.dropout is not None:  # every dropout probability of the config (0: the curves can agree exactly)
        for key in [k for k in config.to_dict() if "dropout" in k and isinstance(getattr(config, k), float)]:
            setattr(config, key, args.dropout)
    if getattr(config, "global_first_token", None) is False:
        config.global_first_token = True  # Longformer's classification recipe, as the example does
    if args.set:  # another size of the same architecture, from scratch (throughput and scaling, not the loss)
        changes = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
        config = type(config)(**{**config.to_dict(), **changes})  # the config's own checks and per-layer expansion
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, config=config,
                                                                                dtype=torch.float32)
    fsdp = {}
    if args.fsdp:
        fsdp = dict(fsdp="full_shard auto_wrap", fsdp_config={"transformer_layer_cls_to_wrap": ["EfficientBlock"],
                                                              "use_orig_params": True})
    padding = dict(padding="max_length", max_length=args.pad_to) if args.pad_to else {}
    timer, log = StepTimer(torch.device("cuda" if on_gpu else "cpu")), LossLog()
    callbacks = [timer, log]
    if args.profile and on_gpu and int(os.environ.get("RANK", "0")) == 0:  # rank 0's kernels, NCCL's waits included
        args.out.mkdir(parents=True, exist_ok=True)
        callbacks.append(StepProfiler(args.warmup_steps, args.profile, args.out / f"profile_{args.label}.md"))
    with tempfile.TemporaryDirectory() as scratch:
        training = transformers.TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=args.batch, max_steps=args.steps,
            learning_rate=args.learning_rate, lr_scheduler_type="constant", bf16=on_gpu, use_cpu=not on_gpu,
            logging_steps=args.log_every, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            seed=0, data_seed=0, dataloader_num_workers=2 if on_gpu else 0, dataloader_drop_last=True,
            remove_unused_columns=False, ddp_find_unused_parameters=False, train_sampling_strategy=args.sampling,
            **fsdp)
        if training.world_size != world:
            raise SystemExit(f"error: launched {world} processes but Trainer runs on {training.world_size}")
        trainer = transformers.Trainer(model=model, args=training, train_dataset=data, callbacks=callbacks,
                                       data_collator=transformers.DataCollatorWithPadding(tokenizer, **padding))
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0,
                        device="cuda" if on_gpu else "cpu")
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    if training.process_index == 0:
        steady = statistics.median(timer.times[args.warmup_steps:])
        run = {"label": args.label, "processes": world, "config_changes": args.set, "dropout": args.dropout,
               "log_every": args.log_every,
               "batch_per_process": args.batch,
               "global_batch": world * args.batch, "fsdp": args.fsdp, "sampling": args.sampling, "pad_to": args.pad_to,
               "losses": log.losses, "step_s": timer.times,
               "steady_step_s": steady,
               "samples_per_s": world * args.batch / steady, "peak_gib": float(peak),
               "device": torch.cuda.get_device_name() if on_gpu else "cpu", "model": str(args.model)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"run_{args.label}.json").write_text(json.dumps(run, indent=1))
        print(json.dumps({k: v for k, v in run.items() if k not in ("losses", "step_s")}))


def report(out: Path) -> str:
    """The markdown table of every run_*.json in `out`."""
    runs = [json.loads(path.read_text()) for path in sorted(out.glob("run_*.json"))]
    lone = [run for run in runs if run["processes"] == 1]
    lines = ["| run | processes | batch per process | global batch | steady step (ms) | samples/s | vs 1 process, "
             "same batch per process | peak GiB (busiest rank) | max abs loss diff vs 1 process, same global batch "
             "(steps) | mean loss, last 10 steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        setting = ("dropout", "log_every", "sampling", "pad_to")
        defaults = {"log_every": 1, "sampling": "random"}
        alike = [r for r in lone if all(r.get(k, defaults.get(k)) == run.get(k, defaults.get(k)) for k in setting)]
        same_batch = next((r for r in alike if r["batch_per_process"] == run["batch_per_process"]), None)
        same_global = next((r for r in alike if r["global_batch"] == run["global_batch"]), None)
        scaling = f"{run['samples_per_s'] / same_batch['samples_per_s']:.2f}x" if same_batch else "-"
        curve = "-"
        if same_global and same_global is not run:
            steps = min(len(run["losses"]), len(same_global["losses"]))
            pairs = zip(run["losses"][:steps], same_global["losses"][:steps], strict=True)
            gap = max(abs(a - b) for a, b in pairs)
            curve = f"{gap:.2e} ({steps})"
        kind = "FSDP" if run["fsdp"] else ("DDP" if run["processes"] > 1 else "one process")
        if run.get("dropout") is not None:
            kind += f", dropout {run['dropout']:g}"
        if run.get("sampling", "random") != "random":
            kind += f", {run['sampling']}"
        if run.get("pad_to"):
            kind += f", padded to {run['pad_to']}"
        lines.append(f"| {run['label']} ({kind}) | {run['processes']} | {run['batch_per_process']} | "
                     f"{run['global_batch']} | {1000 * run['steady_step_s']:.1f} | {run['samples_per_s']:.1f} | "
                     f"{scaling} | {run['peak_gib']:.1f} | {curve} | {statistics.mean(run['losses'][-10:]):.4f} |")
    text = "\n".join(lines) + "\n"
    (out / "distributed.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a folder written by `hf-efficient convert`")
    parser.add_argument("--data", type=Path, help="a folder written by `padded_finetune.py --prepare`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="run")
    parser.add_argument("--batch", type=int, default=4, help="articles per process and step")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the steady median")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--log-every", type=int, default=1, help="steps between logged losses (each log is a "
                        "collective over the processes and a host sync)")
    parser.add_argument("--dropout", type=float, help="set every dropout probability of the model (default: its own)")
    parser.add_argument("--sampling", default="random", choices=("random", "group_by_length", "batch_rebalance"),
                        help="Trainer's train_sampling_strategy")
    parser.add_argument("--pad-to", type=int, help="pad every batch to this many tokens (default: to its longest)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key of --model changed (e.g. hidden_size=768); the model is then built from "
                        "scratch with random weights")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile rank 0 over STEPS steps after the warm-up (GPU busy time, longest kernels)")
    parser.add_argument("--fsdp", action="store_true", help="shard with Trainer's FSDP, one unit per EfficientBlock")
    parser.add_argument("--report", action="store_true", help="write OUT/distributed.md from OUT's runs, train nothing")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
    elif args.model is None or args.data is None:
        parser.error("--model and --data are needed to train")
    else:
        train(args)


if __name__ == "__main__":
    main()
