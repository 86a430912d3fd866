"""generate() on every variant that decodes: greedy, sampling and beam search with the cache equal the same search
without it, batched left-padded prompts equal each prompt alone, and no deprecation warning on the way, on the
installed transformers (CI runs this file on the newest and the lowest version the package declares)."""

import warnings

import pytest
import torch
from testers import TESTERS
from transformers.utils import logging as transformers_logging

from hf_efficient.auto import VARIANTS
from hf_efficient.core.cache_argument import CACHE_FIELD, returned_cache

DECODERS = sorted(name for name, variant in VARIANTS.items()
                  if variant.model.attention_class.supports_cache and "causal_lm" in variant.heads)
STYLES = ("gpt2", "llama")


def decoder(model_type: str, style: str, seed: int = 0):
    torch.manual_seed(seed)
    return VARIANTS[model_type].heads["causal_lm"](TESTERS[model_type].config(style)).eval()


def prompt(model, batch: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if hasattr(model.config, "num_levels"):  # an image model: bos, then intensity levels
        ids = torch.randint(0, model.config.num_levels, (batch, length), generator=generator)
        return ids.index_fill(1, torch.tensor([0]), model.config.bos_token_id)
    return torch.randint(1, model.config.vocab_size, (batch, length), generator=generator)


def test_every_causal_variant_decodes():
    assert set(DECODERS) == {"efficient_compressive", "efficient_image_transformer", "efficient_linear_transformer",
                             "efficient_longformer", "efficient_memory_compressed",
                             "efficient_performer", "efficient_reformer", "efficient_routing",
                             "efficient_sinkhorn", "efficient_sparse_transformer",
                             "efficient_synthesizer", "efficient_transformer_xl"}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("model_type", DECODERS)
def test_sampling_and_beam_search_with_cache_equal_without(model_type, style):
    model = decoder(model_type, style)
    ids = prompt(model)
    settings = {"max_new_tokens": 8, "pad_token_id": 0}
    with torch.no_grad():
        for search in ({"do_sample": True, "top_k": 0, "temperature": 1.5}, {"num_beams": 3, "do_sample": False}):
            runs = []
            for use_cache in (True, False):
                torch.manual_seed(7)
                runs.append(model.generate(ids, use_cache=use_cache, **search, **settings))
            assert runs[0].shape == (2, 14)
            assert torch.equal(runs[0], runs[1]), f"{search}: generate() with the cache differs from without"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("model_type", DECODERS)
def test_batched_left_padded_generation_equals_each_prompt_alone(model_type, style):
    model = decoder(model_type, style)
    long, short = prompt(model, batch=1, length=9, seed=2), prompt(model, batch=1, length=5, seed=3)
    padded = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(padded)
    mask[1, :4] = 0
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        if not model.model.attention_class.supports_left_padding:
            with pytest.raises(ValueError, match="left"):
                model.generate(padded, attention_mask=mask, **settings)
            return
        batched = model.generate(padded, attention_mask=mask, output_logits=True, return_dict_in_generate=True,
                                 **settings)
        alone = [model.generate(row, output_logits=True, return_dict_in_generate=True, **settings)
                 for row in (long, short)]
    for row, single in enumerate(alone):
        assert torch.equal(batched.sequences[row, -single.sequences.shape[1]:], single.sequences[0])
        for step, logits in enumerate(single.logits):  # the logits, not only their argmax, match at every step
            torch.testing.assert_close(batched.logits[step][row], logits[0], rtol=1e-4, atol=1e-4,
                                       msg=f"row {row} (left-padded: {row == 1}) step {step}")


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoding_logs_no_deprecation_warning(model_type, capsys):
    model = decoder(model_type, "llama")
    ids = prompt(model)
    transformers_logging.warning_once.cache_clear()  # a warning already given in this process would hide a new one
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        first = model(input_ids=ids, use_cache=True)
        model(input_ids=ids[:, -1:], cache=returned_cache(first))
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    printed = capsys.readouterr().err
    assert "deprecated" not in printed.lower(), printed
    assert not [w for w in caught if "deprecat" in str(w.message).lower()], [str(w.message) for w in caught]


def test_cache_is_taken_under_either_name_and_returned_under_the_installed_field():
    model = decoder("efficient_longformer", "gpt2")
    ids = prompt(model)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        first = model(input_ids=ids[:, :-1], use_cache=True)
        cache = returned_cache(first)
        assert cache is first[CACHE_FIELD] and cache.get_seq_length() == ids.shape[1] - 1
        by_old_name = model(input_ids=ids[:, -1:], past_key_values=cache).logits[:, -1]
        torch.testing.assert_close(by_old_name, full, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="once"):
            model(input_ids=ids[:, -1:], cache=cache, past_key_values=returned_cache(model(input_ids=ids)))


def test_an_argument_the_model_would_drop_raises():
    model = decoder("efficient_longformer", "gpt2")
    ids = prompt(model)
    with pytest.raises(TypeError, match="does not use"):
        model(input_ids=ids, cahce=None)
    with pytest.raises(TypeError, match="does not use"):
        model.model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 6]))
