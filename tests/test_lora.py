"""LoRA through PEFT on every variant: the declared targets (hf_efficient.lora) cover every trainable parameter of the
attention, PEFT wraps each of them, the wrapped model starts equal to the base model, and a train step changes only
the adapters, the modules trained in full and the classifier."""

import pytest
import torch
from testers import TESTERS
from tiny_sources import one_thread  # noqa: F401  (fixture)
from transformers import BertConfig

from hf_efficient.auto import VARIANTS
from hf_efficient.lora import lora_modules_to_save, lora_target_modules

peft = pytest.importorskip("peft", reason="pip install peft (the `test` and `lora` extras)")
pytestmark = pytest.mark.usefixtures("one_thread")

# attention parameters that are neither a LoRA target nor in modules_to_save: they stay frozen (documented)
FROZEN_UNDER_LORA = {"efficient_synthesizer": {"mixture_weights"}}  # the alphas of a mixture, when trainable


def cases() -> list:
    out = []
    for model_type in sorted(VARIANTS):
        if "sequence_classification" not in VARIANTS[model_type].heads:  # the test trains that head (an image
            continue  # decoder has only its causal-LM head)
        attention = VARIANTS[model_type].model.attention_class
        styles = ["bert"] * attention.supports_bidirectional + ["llama"] * attention.supports_causal
        if "sequence_classification" not in VARIANTS[model_type].heads:  # an image model classifies with its encoder
            styles = [style for style in styles if style == "bert"]
        out += [pytest.param(model_type, style, {}, id=f"{model_type}-{style}") for style in styles]
    out += [
        # no dot product: q_proj/k_proj are frozen buffers, not targets; the dense table trains in full
        pytest.param("efficient_synthesizer", "bert", {"synthesizer_type": "dense", "mixture_weights": None},
                     id="synthesizer-dense"),
        pytest.param("efficient_synthesizer", "bert", {"synthesizer_type": "random", "random_trainable": False,
                                                      "mixture_weights": None},
                     id="synthesizer-fixed-random"),
        pytest.param("efficient_linformer", "bert", {"projection_sharing": "headwise"}, id="linformer-headwise"),
    ]
    return out


def under(name: str, modules: list[str]) -> bool:
    """Whether parameter `name` belongs to a module whose name ends with one of `modules`."""
    return any(f".{module}." in f".{name}" for module in modules)


@pytest.mark.parametrize(("model_type", "style", "overrides"), cases())
def test_lora_wraps_every_target_and_trains_only_adapters_and_head(model_type, style, overrides):
    tester = TESTERS[model_type]
    config = tester.config(style, num_labels=2, **overrides)
    torch.manual_seed(0)
    heads = VARIANTS[model_type].heads
    model = heads.get("sequence_classification", heads.get("image_classification"))(config)
    targets, in_full = lora_target_modules(model), lora_modules_to_save(config)

    # The declaration is complete: every trainable attention parameter is adapted or trained in full.
    attention_parameters = {name for name, p in model.named_parameters() if ".self_attn." in name}
    uncovered = {name.rsplit(".self_attn.", 1)[1] for name in attention_parameters
                 if not under(name, targets) and not under(name, in_full)}
    assert uncovered <= FROZEN_UNDER_LORA.get(model_type, set()), uncovered
    base_modules = dict(model.named_modules())
    for name in targets:
        matches = [m for key, m in base_modules.items() if key.endswith(f".{name}")]
        assert matches and all(type(m) is torch.nn.Linear for m in matches), (name, {type(m) for m in matches})

    inputs = tester.inputs(config, batch=4)
    if VARIANTS[model_type].model.attention_class.supports_global_attention:
        inputs["global_attention_mask"] = tester.global_mask(inputs["input_ids"])
        if config.is_causal:  # rows 0 and 2 pool a global last token: the last layer's global projections reach it
            last = inputs["attention_mask"].sum(-1) - 1
            inputs["global_attention_mask"][[0, 2], last[[0, 2]]] = 1
    labels = torch.tensor([0, 1, 1, 0])
    model.eval()
    with torch.no_grad():
        base_logits = model(**inputs).logits

    lora = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets,
                           modules_to_save=list(in_full))  # PEFT appends the classifier to this list
    wrapped = peft.get_peft_model(model, lora)
    modules = dict(wrapped.named_modules())
    for name in targets:  # PEFT found every listed module, in every layer that has one
        found = [key for key in modules if key.endswith(f".{name}")]
        assert len(found) == sum(key.endswith(f".{name}") for key in base_modules), name
        assert all(isinstance(modules[key], peft.tuners.lora.LoraLayer) for key in found), name
    for name in in_full:
        found = [key for key in modules if key.endswith(f".{name}")]
        assert found and all(isinstance(modules[key], peft.utils.other.ModulesToSaveWrapper) for key in found), name

    wrapped.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(**inputs).logits, base_logits)  # B = 0 and the copies are exact: no change yet

    before = {name: p.detach().clone() for name, p in wrapped.named_parameters()}
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    wrapped.train()
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    wrapped(**inputs, labels=labels).loss.backward()
    optimizer.step()
    changed = {name for name, p in wrapped.named_parameters() if not torch.equal(p, before[name])}

    assert changed <= trainable
    lora_b = {name for name in trainable if ".lora_B." in name}
    saved = {name for name in trainable if ".modules_to_save." in name}
    head = {name for name in saved if ".classifier." in name}
    assert lora_b and head
    assert trainable == lora_b | saved | {name.replace(".lora_B.", ".lora_A.") for name in lora_b}
    # every adapter and every module trained in full received a gradient, so each one is on the forward path
    assert lora_b <= changed, lora_b - changed
    assert saved <= changed, saved - changed


def test_lora_helpers_refuse_a_model_that_is_not_a_variant():
    with pytest.raises(ValueError, match="registered variant"):
        lora_target_modules(BertConfig())
    with pytest.raises(ValueError, match="registered variant"):
        lora_modules_to_save(torch.nn.Linear(2, 2))
