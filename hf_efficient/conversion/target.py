"""The target side of a conversion: the variant, its config keys, and its config built from a source's config alone
(so that every refusal comes before any weights are loaded)."""

import dataclasses

from ..auto import VARIANTS
from ..core.configuration import EfficientConfig
from ..core.variant import Variant
from .families import ConversionError, SourceFamily
from .positions import scale_rotary

NOT_SETTABLE = {"transformers_version", "architectures"}  # config fields transformers writes itself


def resolve_target(target: str) -> Variant:
    model_type = target if target.startswith("efficient_") else f"efficient_{target}"
    if model_type not in VARIANTS:
        names = sorted(t.removeprefix("efficient_") for t in VARIANTS)
        raise ConversionError(f"Unknown target {target!r}; choose one of {names}.")
    return VARIANTS[model_type]


def check_convertible(variant: Variant) -> None:
    """Refuse a target that no token model converts into (its `conversion_refusal` says why)."""
    if variant.conversion_refusal:
        raise ConversionError(f"{variant.model_type} can't be converted from a pretrained model: "
                              f"{variant.conversion_refusal}")


def check_direction(variant: Variant, family: SourceFamily, causal: bool) -> None:
    """Refuse a causal source for a bidirectional-only target (Linformer, BigBird) and the reverse, naming the
    targets that can take it."""
    attention = variant.model.attention_class
    if attention.supports_causal if causal else attention.supports_bidirectional:
        return
    flag = "supports_causal" if causal else "supports_bidirectional"
    able = sorted(t.removeprefix("efficient_") for t, v in VARIANTS.items()
                  if getattr(v.model.attention_class, flag) and not v.conversion_refusal)
    kind, other = ("causal", "bidirectional only (an encoder: it needs is_causal=False)") if causal else \
        ("bidirectional", "causal only (a decoder: it needs is_causal=True)")
    raise ConversionError(f"{variant.model_type} is {other} and can't serve a {kind} {family.name} source; "
                          f"targets that can: {able}.")


def settable_fields(config_class: type) -> set[str]:
    """The keys `--set` may give a config class: its fields, and transformers' num_labels."""
    return {f.name for f in dataclasses.fields(config_class)} - NOT_SETTABLE | {"num_labels"}


def check_options(variant: Variant, options: dict) -> None:
    """Refuse config keys the target's config class doesn't have (a typo would otherwise be saved and ignored)."""
    unknown = sorted(set(options) - settable_fields(variant.config))
    if unknown:
        own = sorted(settable_fields(variant.config) - settable_fields(EfficientConfig))
        raise ConversionError(f"{variant.model_type} has no config field {', '.join(unknown)}. Its own knobs: {own}; "
                              f"the backbone's: {sorted(settable_fields(EfficientConfig))}.")


def target_config(variant: Variant, family: SourceFamily, source_config, head: str, max_length: int | None = None,
                  rope_scaling: str | dict | None = None, options: dict | None = None, use_pooler: bool | None = None):
    """The target's config for a source: its backbone fields, `options` (keys of the target's config), the new length
    (never below a learned position table's, which would be cut; a rotary source has none and may record a shorter
    one) and rotary scaling. Needs only the source's config, so that every refusal comes before any weights are
    loaded."""
    check_convertible(variant)
    fields = family.backbone_fields(source_config)
    source_length = fields["max_position_embeddings"]
    learned = fields["position_embedding_type"] == "absolute"
    if use_pooler is not None:
        fields["use_pooler"] = use_pooler
    if getattr(source_config, "id2label", None) and head in ("sequence_classification", "token_classification"):
        fields["id2label"] = dict(source_config.id2label)
    check_options(variant, options or {})
    fields.update(options or {})
    if max_length is not None:
        if learned and max_length < source_length:
            raise ConversionError(f"--max-length {max_length} is below the source's {source_length} learned "
                                  f"positions, which would be cut off: give --max-length {source_length} or more.")
        fields["max_position_embeddings"] = max_length
    if rope_scaling is not None:
        try:
            fields["rope_parameters"] = scale_rotary(fields["position_embedding_type"], fields.get("rope_parameters"),
                                                     rope_scaling, source_length, max_length or source_length)
        except ValueError as error:
            raise ConversionError(f"rope scaling {rope_scaling!r}: {error}") from error
    check_direction(variant, family, bool(fields["is_causal"]))
    if head != "model" and head not in variant.heads:
        raise ConversionError(f"{variant.model_type} has no {head} head; it has {sorted(variant.heads)}.")
    try:
        return variant.config(**fields)
    except ValueError as error:
        raise ConversionError(f"{variant.model_type} can't take this source: {error}") from error
