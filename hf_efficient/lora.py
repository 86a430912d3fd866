"""LoRA (PEFT) settings for every variant: the attention projections an adapter wraps, and the attention's other
trainable modules, which train in full.

    from peft import LoraConfig, TaskType, get_peft_model
    from hf_efficient.lora import lora_modules_to_save, lora_target_modules

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=lora_target_modules(model),
                        modules_to_save=lora_modules_to_save(model))
    model = get_peft_model(model, config)  # SEQ_CLS adds the classifier to modules_to_save

Each attention class declares its own (`lora_targets`, `lora_trained_in_full`): q_proj, k_proj, v_proj, o_proj
everywhere; Longformer adds its global q_global_proj, k_global_proj, v_global_proj; a Synthesizer without the dot
product has no trainable q/k. Linformer's E/F, Memory-Compressed's convolutions and the Synthesizer's synthetic
tables are read as weights, not called as nn.Linear, so they go to `modules_to_save` (a LoRA adapter on them would
never be applied). Names are relative to a layer ("self_attn.q_proj"), as PEFT matches module-name suffixes.
"""

from transformers import PretrainedConfig

from .auto import VARIANTS


def variant_config(model_or_config) -> PretrainedConfig:
    """The config of a model (any head, or a PEFT model around one) or config of a registered variant."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else getattr(model_or_config, "config",
                                                                                           None)
    if getattr(config, "model_type", None) not in VARIANTS:
        raise ValueError(f"Expected a model or config of a registered variant ({sorted(VARIANTS)}), got "
                         f"{type(model_or_config).__name__} with model_type={getattr(config, 'model_type', None)!r}.")
    return config


def lora_target_modules(model_or_config) -> list[str]:
    """LoraConfig's `target_modules`: every nn.Linear projection of the variant's attention."""
    config = variant_config(model_or_config)
    return [f"self_attn.{name}" for name in VARIANTS[config.model_type].model.attention_class.lora_targets(config)]


def lora_modules_to_save(model_or_config) -> list[str]:
    """LoraConfig's `modules_to_save` for the attention: its trainable modules that LoRA can't wrap (may be empty)."""
    config = variant_config(model_or_config)
    attention = VARIANTS[config.model_type].model.attention_class
    return [f"self_attn.{name}" for name in attention.lora_trained_in_full(config)]
