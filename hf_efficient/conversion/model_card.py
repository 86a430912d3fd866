"""The model card written next to every converted checkpoint, with the measured fidelity."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..hub import use_text, version_line

PIPELINES = {
    "model": "feature-extraction",
    "masked_lm": "fill-mask",
    "causal_lm": "text-generation",
    "sequence_classification": "text-classification",
    "token_classification": "token-classification",
    "question_answering": "question-answering",
}

TEMPLATE = """---
{card_data}
---

# {name}

A long-context **{model_type}** model converted by [hf-efficient](https://github.com/hf-efficient/hf-efficient)
from `{source}` ({source_length} positions) to **{max_length}** positions.

- Architecture: `{architecture}`, {layers} layers, hidden {hidden}, {heads} heads.
- Attention: {attention}.
- Positions: {positions}
- New parameters: {new_parameters}

{version_line}

## Fidelity to the source (measured at conversion)

{fidelity}

## Use

{use}

The weights start from the source; the long-context pattern is new to them, so fine-tune on your long-document
task (the model trains with `transformers.Trainer` like any other).
"""


def describe_new_parameters(result) -> str:
    if not result.new_parameters:
        return f"none. {result.new_parameters_recipe}".strip()
    count = len(result.new_parameters)
    return f"{count} tensor{'s' if count != 1 else ''}. {result.new_parameters_recipe}"


def write_model_card(out: Path, result, repo_id: str | None = None, folder: Path | None = None) -> None:
    """README.md in `folder` (default `out`, the folder it describes): Hub metadata (base_model when the source has a
    Hub id), the architecture, the measured fidelity, and how to load it (from `repo_id` when it is uploaded, else
    from `out`)."""
    config = result.model.config
    fidelity = result.fidelity
    if fidelity is None:
        fidelity_text = "Not measured (conversion ran with the check disabled)."
    else:
        degenerate = (
            f"| full-attention setting `{fidelity.degenerate_overrides}` | {fidelity.degenerate_max_abs_diff:.2e} |\n"
            if fidelity.degenerate_overrides is not None
            else "| full-attention setting | none: this method never equals softmax attention exactly |\n"
        )
        fidelity_text = (
            f"On {fidelity.tokens} tokens of real English prose, fp32, comparing `{fidelity.compared}`:\n\n"
            f"| setting | max abs difference to the source |\n|---|---|\n{degenerate}"
            f"| as converted | {fidelity.as_converted_max_abs_diff:.2e} |\n"
        )
        lm = fidelity.language_model
        if lm is not None:
            fidelity_text += (
                f"\n{lm.metric} on {lm.tokens} held-out tokens ({lm.text}):\n\n| model | context | loss |\n"
                f"|---|---|---|\n| source | {lm.source_context} | {lm.source_loss:.4f} |\n"
                f"| converted | {lm.converted_context} | {lm.converted_loss:.4f} |\n"
            )
    positions = (
        f"learned absolute table extended from {result.source_length} to {config.max_position_embeddings}."
        if config.position_embedding_type == "absolute"
        else f"{config.position_embedding_type} (no table to extend)."
    )
    rope = config.rope_parameters if config.position_embedding_type == "rotary" else None
    if rope and rope.get("rope_type", "default") != "default":
        positions = (f"rotary, scaled by transformers' `rope_parameters` {rope} for {config.max_position_embeddings} "
                     f"positions (the source's: {result.source_length}).")
    data = ModelCardData(
        base_model=result.base_model,
        library_name="transformers",
        pipeline_tag=PIPELINES.get(result.head, "feature-extraction"),
        tags=["hf-efficient", config.model_type, "long-context"],
        license=None,
    )
    card = ModelCard(
        TEMPLATE.format(
            card_data=data.to_yaml(),
            name=out.name,
            model_type=config.model_type,
            source=result.base_model or result.source,
            source_length=result.source_length,
            max_length=config.max_position_embeddings,
            architecture=type(result.model).__name__,
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            heads=config.num_attention_heads,
            attention=config.describe_attention(),
            positions=positions,
            new_parameters=describe_new_parameters(result),
            fidelity=fidelity_text,
            version_line=version_line(config),
            use=use_text(config, repo_id or str(out)),
        )
    )
    card.save((folder or out) / "README.md")
