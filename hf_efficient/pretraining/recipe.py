"""`hf-efficient pretrain`: continue masked-LM (encoders) or causal-LM (decoders) training of a converted model on
long documents, with transformers' `Trainer` (its progress bar and resumable checkpoints).

Phases, each a Trainer run with its own checkpoints under `out/` (`warmup/`, `train/`):

1. masked-LM head warm-up (encoders, `head_steps` > 0): every parameter frozen except the masked-LM head (the tied
   decoder matrix stays the frozen word embeddings), at the source's length, on the source itself
   (source_equivalent: the converted weights with exact full attention), else on the model as converted.
2. continued training at the target length: every parameter (`lora_rank` 0; `freeze_embeddings` keeps the word
   embeddings), or LoRA adapters (PEFT) on the attention projections plus, in full, the attention's other trainable
   modules, a learned position table and the masked-LM head's transform. The adapters are merged at the end
   (W + scale * B @ A) and their factors kept in `lora_factors.safetensors` beside the weights.

Writes `out/model` (save_pretrained + tokenizer) and `out/results.json`: the held-out loss and bits per character
(measure.py) of the source at its length, the converted model before training and after, at each evaluation length.
`datasets` is imported lazily (data.py); the held-out split is by document.
"""

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
from transformers.utils import logging

from ..lora import lora_modules_to_save, lora_target_modules
from .data import pack_documents, split_documents
from .measure import evaluate_lm
from .texts import load_documents

logger = logging.get_logger(__name__)
LORA_FACTORS = "lora_factors.safetensors"


@dataclass
class PretrainOptions:
    length: int = 4096  # tokens per training block
    steps: int = 1000  # optimizer steps of the continued training
    head_steps: int = 0  # optimizer steps of the masked-LM head warm-up (encoders)
    source_length: int = 512  # the source's length: the warm-up's blocks and the source's evaluation
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    warmup_steps: int = 0  # learning-rate warm-up of each phase
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # 0: train every parameter
    freeze_embeddings: bool = False
    sources: list[str] = field(default_factory=lambda: ["news"])
    held_out_fraction: float = 0.05
    eval_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    eval_tokens: int = 65536  # held-out tokens scored per length (whole documents)
    save_steps: int = 200
    seed: int = 0


def load_model(folder: str | Path):
    """The converted model with its language-model head (masked LM for an encoder, causal LM for a decoder)."""
    config = AutoConfig.from_pretrained(folder)
    causal = bool(getattr(config, "is_causal", False))
    auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    return auto.from_pretrained(folder, dtype=torch.float32), causal


def source_equivalent(model, length: int):
    """The source itself at `length` tokens, sharing no parameters with `model`: its weights in a Longformer whose
    window covers the input (exact full attention; every variant names the backbone's parameters alike, the
    variant's own ones are left out and the Longformer's global projections go unused without global tokens). The
    variant's own full-attention setting is not used: the Performer's only estimates softmax attention. None where
    the weights don't fit (a variant with its own block)."""
    from ..auto import VARIANTS

    longformer = VARIANTS["efficient_longformer"]
    overrides = longformer.config.full_attention_overrides(length)
    config = longformer.config.from_dict({**model.config.to_dict(), **overrides, "model_type": "efficient_longformer"})
    head = "causal_lm" if config.is_causal else "masked_lm"
    reference = longformer.heads[head](config)
    state = {k: v for k, v in model.state_dict().items() if k in reference.state_dict()}
    missing = set(reference.state_dict()) - set(state) - set(getattr(reference, "all_tied_weights_keys", {}) or {})
    if any("global_proj" not in key for key in missing):
        logger.warning(f"{model.config.model_type} does not map onto a dense reference ({sorted(missing)[:3]}...): "
                       "the source is not measured.")
        return None
    reference.load_state_dict(state, strict=False)
    return reference.eval()


def masked_lm_head_parameters(model) -> list[str]:
    """The masked-LM head's own parameters (the transform and the decoder bias, not the tied decoder matrix)."""
    decoder = model.get_output_embeddings().weight
    return [name for name, p in model.named_parameters() if name.startswith("lm_head.") and p is not decoder]


def train_only(model, names: list[str]) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)


def masking_trainer_class():
    """A Trainer that masks each masked-LM batch in `training_step`, from a generator seeded by (seed, optimizer
    step, micro-batch) instead of the collator's draw from the global RNG: Trainer collates batches ahead and, after
    a resume, before it restores its RNG state, so collator masks of a resumed run differ from an uninterrupted one's.
    The masking itself is DataCollatorForLanguageModeling's (15%; 80% [MASK], 10% random, 10% kept)."""
    from transformers import Trainer

    class MaskingTrainer(Trainer):
        def __init__(self, *args, masking=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.masking, self.micro_batch = masking, (-1, 0)

        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step
            micro = self.micro_batch[1] + 1 if self.micro_batch[0] == step else 0
            self.micro_batch = (step, micro)
            ids = inputs["input_ids"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.args.seed * 1_000_003 + step * 1_009 + micro) % 2**63)
                special = torch.isin(ids.cpu(), torch.tensor(self.masking.tokenizer.all_special_ids))
                masked, labels = self.masking.torch_mask_tokens(ids.cpu(), special_tokens_mask=special)
            inputs = {**inputs, "input_ids": masked.to(ids.device), "labels": labels.to(ids.device)}
            return super().training_step(model, inputs, num_items_in_batch)

    return MaskingTrainer


def with_labels(rows: list[dict]) -> dict:
    """Causal-LM batches: the blocks as inputs and labels (the model shifts them)."""
    from transformers import default_data_collator

    return default_data_collator([{**row, "labels": row["input_ids"]} for row in rows])


def trainer_for(model, dataset, tokenizer, causal: bool, out: Path, steps: int, learning_rate: float,
                options: PretrainOptions, callbacks=()):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, default_data_collator

    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation, learning_rate=learning_rate,
        warmup_steps=options.warmup_steps, bf16=options.bf16, save_steps=options.save_steps, save_total_limit=2,
        logging_steps=max(1, min(50, steps // 10)), report_to=[], seed=options.seed, data_seed=options.seed,
        remove_unused_columns=False, dataloader_pin_memory=torch.cuda.is_available(),
    )
    if causal:
        return Trainer(model=model, args=args, train_dataset=dataset, data_collator=with_labels,
                       callbacks=list(callbacks))
    masking = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    return masking_trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                                   callbacks=list(callbacks), masking=masking)


def run_phase(trainer, out: Path, steps: int, resume: bool) -> bool:
    """Train (from the last checkpoint in `out` when `resume`); False when stopped before `steps`."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(out)) if resume and out.is_dir() else None
    if last:
        logger.info(f"Resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    if trainer.state.global_step < steps:
        logger.warning(f"Stopped at step {trainer.state.global_step} of {steps}: run again with resume to continue.")
        return False
    return True


def warm_up_head(model, tokenizer, documents, out: Path, options: PretrainOptions, resume: bool, callbacks) -> bool:
    """Phase 1 (see the module docstring); the trained head is copied into `model` and kept in out/head.safetensors
    (a later run with resume skips the phase)."""
    saved = out / "head.safetensors"
    names = masked_lm_head_parameters(model)
    if resume and saved.exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(saved), strict=False)
        return True
    twin = source_equivalent(model, options.source_length) or model
    train_only(twin, names)
    dataset = pack_documents(documents, tokenizer, options.source_length, causal=False)
    trainer = trainer_for(twin, dataset, tokenizer, False, out / "warmup", options.head_steps,
                          options.head_learning_rate, options, callbacks)
    if not run_phase(trainer, out / "warmup", options.head_steps, resume):
        return False
    head = {name: p.detach().clone() for name, p in twin.named_parameters() if name in names}
    model.load_state_dict(head, strict=False)
    save_file(head, saved)
    return True


def add_lora(model, rank: int):
    """PEFT LoRA on the attention projections; the attention's other trainable modules, a learned position table
    and the masked-LM head's transform train in full."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("LoRA training needs PEFT: `pip install peft`, or train every parameter (lora_rank 0).") \
            from error

    in_full = [*lora_modules_to_save(model), "embed_positions"]
    head = masked_lm_head_parameters(model) if not model.config.is_causal else []
    wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=lora_target_modules(model)))
    for name, parameter in model.named_parameters():
        if name in head or any(f"{module}." in name for module in in_full) and "lora_" not in name:
            parameter.requires_grad_(True)
    return wrapped


def merge_lora(wrapped) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(the base model with every adapter merged as W + scale * B @ A, {"<weight>.lora_A"/".lora_B"/".lora_scale"})."""
    from ..checkpoints import apply_low_rank

    factors = {}
    for name, module in wrapped.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = f"{name}.weight".replace("base_model.model.", "")
            factors[f"{key}.lora_A"] = module.lora_A["default"].weight.detach().clone()
            factors[f"{key}.lora_B"] = module.lora_B["default"].weight.detach().clone()
            factors[f"{key}.lora_scale"] = torch.tensor(float(module.scaling["default"]))
    model = wrapped.unload()  # the base model as it was, adapters removed
    state = model.state_dict()
    with torch.no_grad():
        for key in {k.rsplit(".lora_", 1)[0] for k in factors}:
            state[key].copy_(apply_low_rank(state[key], factors[f"{key}.lora_A"], factors[f"{key}.lora_B"],
                                            factors[f"{key}.lora_scale"]))
    return model, factors


def check_options(options: PretrainOptions, model, causal: bool, out: Path, resume: bool) -> None:
    """ValueErrors, before any work, for options that can't run."""
    limit = model.config.max_position_embeddings
    if not 2 <= options.length <= limit:
        raise ValueError(f"length {options.length}: give 2 to {limit} (the model's positions).")
    if not 2 <= options.source_length <= limit:
        raise ValueError(f"source_length {options.source_length}: give 2 to {limit} (the model's positions).")
    for name in ("steps", "batch_size", "gradient_accumulation", "save_steps", "eval_tokens"):
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(options, name)}.")
    if options.head_steps < 0 or options.lora_rank < 0:
        raise ValueError("head_steps and lora_rank must be 0 or more.")
    if options.head_steps and causal:
        raise ValueError("head_steps warms up a masked-LM head; this model is causal and keeps its own LM head.")
    if not options.eval_lengths or min(options.eval_lengths) < 2:
        raise ValueError(f"eval_lengths {options.eval_lengths}: give lengths of at least 2 tokens.")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"{out} exists and is not empty: pass resume to continue its training, or another out.")


def pretrain(model_folder: str | Path, out: str | Path, options: PretrainOptions | None = None,
             documents: list[str] | None = None, resume: bool = False, callbacks=()) -> dict | None:
    """The recipe (module docstring). `documents` replaces the named text sources. Returns the results written to
    out/results.json, or None when training stopped early (a callback, an interruption): run again with resume."""
    options = options or PretrainOptions()
    out = Path(out)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model, causal = load_model(model_folder)
    check_options(options, model, causal, out, resume)
    documents = load_documents(options.sources) if documents is None else documents
    train_documents, held_out = split_documents(documents, options.held_out_fraction, options.seed)
    out.mkdir(parents=True, exist_ok=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def measure(m, lengths):
        return evaluate_lm(m.to(device), held_out, lengths, tokenizer, options.eval_tokens)

    if not causal and options.head_steps and not warm_up_head(model, tokenizer, train_documents, out, options,
                                                               resume, callbacks):
        return None
    reference = source_equivalent(model, options.source_length)
    results = {"options": asdict(options), "model_folder": str(model_folder),
               "data": {"train_documents": len(train_documents), "held_out_documents": len(held_out)},
               "source": measure(reference, [options.source_length]) if reference is not None else None,
               "source_note": "the converted weights in a dense-window Longformer (the source, exactly)"
               if reference is not None else "the variant's weights don't map onto a dense reference: not measured",
               "before": measure(model, options.eval_lengths)}
    if options.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trained = add_lora(model, options.lora_rank) if options.lora_rank else model
    dataset = pack_documents(train_documents, tokenizer, options.length, causal)
    trainer = trainer_for(trained, dataset, tokenizer, causal, out / "train", options.steps, options.learning_rate,
                          options, callbacks)
    if not run_phase(trainer, out / "train", options.steps, resume):
        return None
    final = out / "model"
    if options.lora_rank:
        model, factors = merge_lora(trained)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    if options.lora_rank:
        save_file(factors, final / LORA_FACTORS)
    results["after"] = measure(model, options.eval_lengths)
    results["train_loss"] = trainer.state.log_history[-1].get("train_loss")
    results["hardware"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    results["seconds"] = round(time.time() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
