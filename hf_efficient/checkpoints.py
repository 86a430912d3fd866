"""Named trained checkpoints shipped as small deltas onto the deterministic conversion of a packaged source.

A checkpoint = a conversion recipe (the `hf-efficient convert` arguments) + `data/checkpoints/<name>/delta.safetensors`
(<= 32 MB: every tensor that training changed, or for a LoRA-adapted weight its factors `<key>.lora_A`, `.lora_B`,
`.lora_scale`, applied as W + scale * B @ A) + `manifest.json` (the recipe, the SHA-256 of the delta file, and the
outputs of the assembled model on a fixed input: the SHA-256 of their fp32 bytes and a sample of them).

`materialise` converts the source (torch seeded, so newly initialised tensors are reproducible), applies the delta,
recomputes the outputs and refuses a delta whose hash differs or outputs that differ from the recorded sample by
more than OUTPUT_TOLERANCE (bit-identical outputs are not required: another CPU or torch build rounds differently),
then writes the folder whole (output_folder.written_in_place_of). `make_delta` builds the delta and manifest from a
trained folder (`hf-efficient pretrain`'s out/model), with the checkpoint's model card (README.md of the folder it
builds) from the results.json beside it.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load, save
from transformers.utils import logging

from .conversion.convert import (
    CHECK_TEXT,
    check_before_work,
    convert_model,
    load_source,
    load_tokenizer,
    resolve_source,
    save_output,
    upload,
)
from .conversion.families import ConversionError
from .conversion.output_folder import written_in_place_of

logger = logging.get_logger(__name__)

DATA = Path(__file__).resolve().parent / "data" / "checkpoints"
MAX_DELTA_BYTES = 32 * 1024 * 1024
FIXED_INPUT_TOKENS = 32
OUTPUT_TOLERANCE = 1e-4  # max |difference| / (1 + |recorded|) of the output sample
LOW_RANK = (".lora_A", ".lora_B", ".lora_scale")


class CheckpointError(ConversionError):
    """A checkpoint that can't be built or verified; the message says why and what to do."""


@dataclass
class Checkpoint:
    name: str
    source: str  # convert --from
    target: str  # convert --to
    max_length: int
    head: str
    options: dict = field(default_factory=dict)  # the target's config knobs (convert --set)
    training: str = ""  # `hf-efficient pretrain` options of its training


ENCODER_TRAINING = ("--sources news bbc webster speeches --length 4096 --head-steps 500 --steps 2000 --lora-rank 64 "
                    "--freeze-embeddings --batch-size 8 --bf16")
DECODER_TRAINING = ("--sources news bbc webster speeches --length 16384 --steps 1000 --lora-rank 16 "
                    "--freeze-embeddings --gradient-accumulation 8 --bf16 --gradient-checkpointing "
                    "--eval-lengths 512 1024 2048 4096 8192 16384 --source-length 8192")
REGISTRY = {c.name: c for c in [
    Checkpoint("minilm-longformer-4096", "packaged:minilm", "longformer", 4096, "masked_lm", training=ENCODER_TRAINING),
    Checkpoint("minilm-bigbird-4096", "packaged:minilm", "bigbird", 4096, "masked_lm", training=ENCODER_TRAINING),
    Checkpoint("minilm-performer-4096", "packaged:minilm", "performer", 4096, "masked_lm", training=ENCODER_TRAINING),
    Checkpoint("smollm2-longformer-16k", "packaged:smollm2", "longformer", 16384, "causal_lm",
               {"attention_window": 4096}, training=DECODER_TRAINING),
    Checkpoint("smollm2-performer-16k", "packaged:smollm2", "performer", 16384, "causal_lm",
               training=DECODER_TRAINING),
]}


def commands(checkpoint: Checkpoint) -> list[str]:
    """The commands that train it: convert, pretrain, make the delta."""
    run = f"runs/{checkpoint.name}"
    return [convert_command(checkpoint, f"{run}/converted"),
            f"hf-efficient pretrain {run}/converted --out {run} {checkpoint.training}".strip(),
            f"hf-efficient checkpoint {checkpoint.name} --make-delta {run}/model"]


def lookup(name: str) -> Checkpoint:
    if name not in REGISTRY:
        raise CheckpointError(f"Unknown checkpoint {name!r}; choose one of {sorted(REGISTRY)}.")
    return REGISTRY[name]


def recipe(checkpoint: Checkpoint) -> dict:
    return {k: v for k, v in asdict(checkpoint).items() if k not in ("name", "training")}


def convert_command(checkpoint: Checkpoint, out: str) -> str:
    knobs = "".join(f" --set {k}={json.dumps(v)}" for k, v in checkpoint.options.items())
    return (f"hf-efficient convert --from {checkpoint.source} --to {checkpoint.target} --max-length "
            f"{checkpoint.max_length} --head {checkpoint.head}{knobs} --out {out}")


def converted(checkpoint: Checkpoint, out: Path | None = None, overwrite: bool = False):
    """(conversion result, tokenizer, source folder, output folder): the recipe run with torch seeded (forked RNG);
    `out` is checked before any work."""
    source, load_kwargs, base_model = resolve_source(checkpoint.source)
    source_folder, out_dir = check_before_work(source, load_kwargs, checkpoint.target, out, overwrite, checkpoint.head,
                                               checkpoint.max_length, None, None, None, checkpoint.options)
    source_model, family, _ = load_source(source, **load_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        result = convert_model(source_model, family, checkpoint.target, checkpoint.head, checkpoint.max_length,
                               source_name=source, **checkpoint.options)
    result.base_model = base_model
    return result, load_tokenizer(source, **load_kwargs), source_folder, out_dir


def apply_low_rank(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W + scale * B @ A (a LoRA adapter merged), in W's dtype."""
    return weight + ((b.float() @ a.float()) * scale.float()).to(weight.dtype)


@torch.no_grad()
def apply_delta(model: torch.nn.Module, delta: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, tensor in delta.items():
        target = key.removesuffix(LOW_RANK[0]).removesuffix(LOW_RANK[1]).removesuffix(LOW_RANK[2])
        if target not in state:
            raise CheckpointError(f"The delta names {key}, which the converted model does not have: the delta was made "
                                  "for another recipe or version; make it again with --make-delta.")
        if key.endswith(LOW_RANK[0]):
            state[target].copy_(apply_low_rank(state[target], tensor, delta[f"{target}.lora_B"],
                                               delta[f"{target}.lora_scale"]))
        elif target == key:
            if tensor.shape != state[key].shape:
                raise CheckpointError(f"The delta's {key} has shape {tuple(tensor.shape)}, the model's "
                                      f"{tuple(state[key].shape)}: make the delta again with --make-delta.")
            state[key].copy_(tensor)


@torch.no_grad()
def fixed_outputs(model, tokenizer) -> dict:
    """The model's outputs on the first FIXED_INPUT_TOKENS tokens of the package's prose: SHA-256 of the fp32 bytes
    of all of them, and a sample (each position's scores of the input's own token ids, or its first hidden features)."""
    if tokenizer is None:
        raise CheckpointError("The source has no tokenizer: a checkpoint needs one for its fixed input.")
    ids = tokenizer(CHECK_TEXT.read_text(), add_special_tokens=False, truncation=True,
                    max_length=FIXED_INPUT_TOKENS)["input_ids"]
    ids = torch.tensor([ids])
    output = model.eval()(input_ids=ids)
    values = (output.logits if hasattr(output, "logits") else output.last_hidden_state)[0].float().contiguous()
    sample = values[:, ids[0]] if hasattr(output, "logits") else values[:, :FIXED_INPUT_TOKENS]
    return {"input_ids": ids[0].tolist(), "sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest(),
            "sample": [[round(v, 6) for v in row] for row in sample.tolist()]}


def compare_outputs(found: dict, recorded: dict) -> float:
    """The largest relative difference of the output samples; refuses a different input or over OUTPUT_TOLERANCE."""
    if found["input_ids"] != recorded["input_ids"]:
        raise CheckpointError("The tokenizer gives another fixed input than the one recorded: the source changed.")
    new, old = torch.tensor(found["sample"]), torch.tensor(recorded["sample"])
    difference = float(((new - old).abs() / (1 + old.abs())).max()) if new.shape == old.shape else float("inf")
    if difference > OUTPUT_TOLERANCE:
        raise CheckpointError(f"The assembled model's outputs differ from the recorded ones (relative difference "
                              f"{difference:.2e} > {OUTPUT_TOLERANCE:.0e}): the conversion or the delta changed. "
                              "Reinstall hf-efficient, or make the delta again from the trained folder.")
    return difference


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_shipped(checkpoint: Checkpoint, data: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest, delta) of a shipped checkpoint, the delta's hash and the manifest's recipe checked."""
    folder = data / checkpoint.name
    if not (folder / "manifest.json").is_file() or not (folder / "delta.safetensors").is_file():
        raise CheckpointError(f"{checkpoint.name} is not trained yet: no delta is shipped in {folder}. Train it with "
                              f"{'; '.join(commands(checkpoint))}.")
    manifest = json.loads((folder / "manifest.json").read_text())
    raw = (folder / "delta.safetensors").read_bytes()
    if sha256(raw) != manifest["delta_sha256"]:
        raise CheckpointError(f"{folder / 'delta.safetensors'} is corrupted: its SHA-256 differs from the manifest's. "
                              "Reinstall hf-efficient.")
    if manifest["recipe"] != recipe(checkpoint):
        raise CheckpointError(f"The shipped delta of {checkpoint.name} was made for the recipe {manifest['recipe']}, "
                              f"not {recipe(checkpoint)}: make it again with --make-delta.")
    return manifest, load(raw)


def materialise(name: str, out: str | Path, overwrite: bool = False, push_to_hub: str | None = None,
                data: Path | None = None) -> Path:
    """Build checkpoint `name` into `out` (module docstring); returns the folder. Uploads it to `push_to_hub`."""
    checkpoint, data = lookup(name), data or DATA
    manifest, delta = read_shipped(checkpoint, data)
    result, tokenizer, source_folder, out_dir = converted(checkpoint, Path(out), overwrite)
    apply_delta(result.model, delta)
    difference = compare_outputs(fixed_outputs(result.model, tokenizer), manifest["outputs"])
    logger.info(f"{name}: outputs match the recorded ones (largest relative difference {difference:.1e}).")
    with written_in_place_of(out_dir) as folder:
        save_output(folder, result, tokenizer, source_folder, out_dir, checkpoint.max_length, push_to_hub)
        if (data / name / "README.md").is_file():
            (folder / "README.md").write_text((data / name / "README.md").read_text())
    if push_to_hub:
        upload(out_dir, push_to_hub)
    return out_dir


def make_delta(trained_folder: str | Path, name: str, data: Path | None = None) -> Path:
    """Write data/<name>/delta.safetensors and manifest.json from a trained folder; returns the delta's path."""
    from safetensors.torch import load_file

    checkpoint, data = lookup(name), data or DATA
    result, tokenizer, _, _ = converted(checkpoint)
    base = result.model
    trained = type(base).from_pretrained(trained_folder, dtype=torch.float32).eval()
    factors_file = Path(trained_folder) / "lora_factors.safetensors"
    factors = load_file(factors_file) if factors_file.exists() else {}
    tied = set(getattr(trained, "all_tied_weights_keys", {}) or {}) if trained.config.tie_word_embeddings else set()
    base_state, trained_state = base.state_dict(), trained.state_dict()
    if set(base_state) != set(trained_state):
        raise CheckpointError(f"{trained_folder} is not a training of {name}'s conversion: its tensors differ "
                              f"({sorted(set(base_state) ^ set(trained_state))[:5]}...).")
    delta = {}
    for key, tensor in trained_state.items():
        if key in tied or torch.equal(tensor, base_state[key]):
            continue
        if f"{key}.lora_A" in factors:
            delta.update({f"{key}{suffix}": factors[f"{key}{suffix}"].contiguous() for suffix in LOW_RANK})
        else:
            delta[key] = tensor.contiguous()
    raw = save(delta)
    if len(raw) > MAX_DELTA_BYTES:
        largest = sorted(delta, key=lambda k: -delta[k].numel())[:5]
        raise CheckpointError(f"The delta of {name} is {len(raw) / 2**20:.1f} MB, over the {MAX_DELTA_BYTES // 2**20} "
                              f"MB a shipped checkpoint may carry (largest: {largest}): train with LoRA (--lora-rank) "
                              "and --freeze-embeddings.")
    apply_delta(base, delta)
    outputs = fixed_outputs(base, tokenizer)
    compare_outputs(outputs, fixed_outputs(trained, tokenizer))
    folder = data / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "delta.safetensors").write_bytes(raw)
    manifest = {"name": name, "recipe": recipe(checkpoint), "delta_sha256": sha256(raw), "delta_bytes": len(raw),
                "tensors": len(delta), "outputs": outputs, "torch": torch.__version__}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    results = Path(trained_folder).parent / "results.json"  # pretrain's measurements beside its model/
    if results.is_file():
        from .pretraining.card import checkpoint_card

        (folder / "README.md").write_text(checkpoint_card(name, json.loads(results.read_text())))
    return folder / "delta.safetensors"
