"""Every registered variant x every source family, through the whole `convert` (folder in, folder out).

A servable pair (a causal source into a variant that supports causal attention, an encoder into one that supports
bidirectional attention) converts with the tester's sparse knobs, and in the variant's full-attention setting
(`full_attention_overrides`) reproduces the source's logits: to 1e-5 where that setting is exact, to the tester's
`degenerate_tolerance` where it is an estimate (Performer), and where there is none (Linear Transformer) the report
says so. As converted, with the sparse knobs, the model really differs from its source. An unservable pair (GPT-2 or
Llama into Linformer or BigBird) raises a ConversionError naming the targets that can take the source; a variant over
other inputs than tokens (Set Transformer) refuses every source, saying why.
"""

import json

import pytest
import torch
from testers import TESTERS
from tiny_sources import CAUSAL_SOURCES, VOCAB, one_thread, save_tiny_source  # noqa: F401 (a fixture)

from hf_efficient.auto import VARIANTS
from hf_efficient.cli import main
from hf_efficient.conversion import ConversionError, convert

KINDS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "gpt2", "llama")
MAX_LENGTH = 128
PADDED_LENGTH = 40
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {kind: (root / kind, save_tiny_source(kind, root / kind)) for kind in KINDS}


def servable(model_type: str, kind: str) -> bool:
    attention = VARIANTS[model_type].model.attention_class
    if VARIANTS[model_type].conversion_refusal:  # a model over other inputs than tokens (sets)
        return False
    return attention.supports_causal if kind in CAUSAL_SOURCES else attention.supports_bidirectional


def full_attention_twin(model, length: int):
    """The converted model in its full-attention setting, with the same weights (as the fidelity check builds it)."""
    config = model.config
    twin = type(model)(type(config).from_dict({**config.to_dict(), **config.full_attention_overrides(length)}))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def padded_batch(pad_token_id: int) -> dict:
    ids = torch.randint(pad_token_id + 1, VOCAB, (2, PADDED_LENGTH), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, PADDED_LENGTH // 2:] = 0
    ids[mask == 0] = pad_token_id
    return {"input_ids": ids, "attention_mask": mask}


def output(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize(("model_type", "kind"), [(t, k) for t in sorted(VARIANTS) for k in KINDS],
                         ids=lambda value: value.removeprefix("efficient_"))
def test_every_target_from_every_source(model_type, kind, sources, tmp_path):
    folder, source = sources[kind]
    target = model_type.removeprefix("efficient_")
    tester = TESTERS[model_type]
    if VARIANTS[model_type].conversion_refusal:
        with pytest.raises(ConversionError, match=rf"{model_type} can't be converted from a pretrained model: "):
            convert(str(folder), target, out=tmp_path / "out", max_length=MAX_LENGTH, eval_tokens=0)
        assert not (tmp_path / "out").exists()
        return
    if not servable(model_type, kind):
        causal = kind in CAUSAL_SOURCES
        other = r"bidirectional only \(an encoder: it needs is_causal=False\)" if causal else \
            r"causal only \(a decoder: it needs is_causal=True\)"
        with pytest.raises(ConversionError, match=rf"{model_type} is {other} and can't serve a "
                           rf"{'causal' if causal else 'bidirectional'} [\w-]+ source; targets that can: \[") as error:
            convert(str(folder), target, out=None, max_length=MAX_LENGTH, eval_tokens=0)
        able = sorted(t.removeprefix("efficient_") for t in VARIANTS if servable(t, kind))
        assert str(able) in str(error.value) and target not in able
        return

    out = tmp_path / "out"
    result = convert(str(folder), target, out=out, max_length=MAX_LENGTH, eval_tokens=0, **tester.mechanism)
    model, fidelity = result.model, result.fidelity
    assert model.config.is_causal == (kind in CAUSAL_SOURCES)
    assert fidelity.compared == ("last_hidden_state" if kind == "electra" else "logits")
    if tester.degenerate_tolerance is None:  # no setting equals softmax attention: the report says so
        assert fidelity.degenerate_overrides is None and fidelity.degenerate_max_abs_diff is None
    else:
        assert fidelity.degenerate_overrides == model.config.full_attention_overrides(result.source_length)
        assert fidelity.degenerate_max_abs_diff <= tester.degenerate_tolerance, fidelity
        # the same on a right-padded batch the check never saw, real tokens only
        inputs = padded_batch(source.config.pad_token_id)
        reference_model = source.base_model if result.head == "model" else source
        with torch.no_grad():
            expected = output(reference_model, inputs)
            actual = output(full_attention_twin(model, PADDED_LENGTH), inputs)
        real = inputs["attention_mask"].bool()
        difference = (expected[real] - actual[real]).abs().max().item()
        assert difference <= tester.degenerate_tolerance, f"padded batch: max abs diff {difference:.2e}"
    # the sparse knobs (or the other kernel) really change the function, so the figures above prove something
    if tester.as_converted_equals_source:
        assert fidelity.as_converted_max_abs_diff <= tester.degenerate_tolerance, fidelity
    else:
        assert fidelity.as_converted_max_abs_diff > 10 * (fidelity.degenerate_max_abs_diff or 1e-6), fidelity

    # positions: a learned table is extended and bounds the input; a rotary model records its length
    assert model.config.max_position_embeddings == MAX_LENGTH
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == MAX_LENGTH
    if model.config.position_embedding_type == "absolute":
        with pytest.raises(ValueError, match=f"has max_position_embeddings={MAX_LENGTH}. Truncate the input"):
            model(input_ids=torch.ones(1, MAX_LENGTH + 1, dtype=torch.long))
    else:
        assert kind == "llama" and model.config.rope_parameters["rope_type"] == "default"

    # the new parameters: documented by the variant, and the recipe is in the model card
    recipe = " ".join((VARIANTS[model_type].new_parameters.__doc__ or "").split())
    assert recipe.startswith("Conversion") and len(recipe) > 80 and result.new_parameters_recipe == recipe
    count = len(result.new_parameters)
    card = (out / "README.md").read_text()
    assert f"- New parameters: {count} tensor{'s' if count != 1 else ''}. {recipe}\n" in card if count \
        else f"- New parameters: none. {recipe}\n" in card


def test_unservable_pair_fails_on_the_command_line_with_the_reason(sources, tmp_path, capsys):
    folder, _ = sources["gpt2"]
    code = main(["convert", "--from", str(folder), "--to", "bigbird", "--max-length", "128", "--out",
                 str(tmp_path / "out"), "--eval-tokens", "0"])
    assert code == 2
    error = capsys.readouterr().err
    assert "efficient_bigbird is bidirectional only (an encoder: it needs is_causal=False) and can't serve a causal " \
           "gpt2 source; targets that can: [" in error
    assert "'longformer'" in error and "'linformer'" not in error
