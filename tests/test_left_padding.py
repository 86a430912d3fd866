"""Padding on either side: the real tokens of a padded batch get the outputs of the unpadded rows, for every
registered variant (and the settings its tester names as tied to absolute positions). Left-padded cached decoding
(what `generate()` does with a batch of prompts) is exact where `supports_left_padding` says so and refused with a
ValueError otherwise; `convert` writes a tokenizer that pads on the side the target supports."""

import pytest
import torch
from test_common import build, get_tester, styles
from tiny_sources import CAUSAL_SOURCES, write_bert_tokenizer
from tiny_sources import tiny_source as make_tiny_source
from transformers import AutoTokenizer

from hf_efficient.auto import VARIANTS
from hf_efficient.conversion import convert

CASES = [
    pytest.param(model_type, settings, id="-".join([model_type, *(f"{k}={v}" for k, v in settings.items())]))
    for model_type in sorted(VARIANTS)
    for settings in ({}, *get_tester(model_type).padding_settings)
]
NEW_TOKENS = 3


def prompt_rows(model_type: str, config) -> list[torch.Tensor]:
    """Three rows of different lengths (the tester's length and two shorter), never the pad id."""
    length = get_tester(model_type).length
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(1, config.vocab_size, (n,), generator=generator) for n in (length, length - 7, length // 3)]


def padded_batch(rows: list[torch.Tensor], width: int, side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        where = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[b, where], mask[b, where] = row, 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """The position ids `generate()` derives from a padded attention mask."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def assert_rows_equal(output: torch.Tensor, mask: torch.Tensor, alone: list[torch.Tensor], message: str) -> None:
    for b, expected in enumerate(alone):
        torch.testing.assert_close(output[b][mask[b].bool()], expected, rtol=1e-5, atol=1e-5, msg=f"{message}, row {b}")


def global_tokens(model, mask: torch.Tensor) -> dict:
    """Where the variant has global tokens: each row's 1st and 6th real tokens are global."""
    if not type(model).attention_class.supports_global_attention:
        return {}
    marked = mask.cumsum(-1) * mask
    return {"global_attention_mask": ((marked == 1) | (marked == 6)).long()}


@pytest.mark.parametrize(("model_type", "settings"), CASES)
def test_padding_on_either_side_leaves_real_tokens_unchanged(model_type, settings):
    if not get_tester(model_type).token_inputs:
        pytest.skip(f"{model_type} reads no token sequence (declared by its tester); its sets are padded anywhere "
                    "in the common suite's inputs and in its own tests")
    for style in styles(model_type):
        model = build(model_type, "model", style, **settings)
        rows = prompt_rows(model_type, model.config)
        width = len(rows[0]) + 5  # every row padded, the longest too
        with torch.no_grad():
            alone = [model(input_ids=row[None], use_cache=False, **global_tokens(model, torch.ones(1, len(row))))
                     .last_hidden_state[0] for row in rows]
            # right padding needs no position ids; left padding takes them from the mask, as generate() does; the
            # reference path (output_attentions) once more on the left
            for side, with_positions, weights in (("right", False, False), ("right", True, False),
                                                  ("left", True, False), ("left", True, True)):
                ids, mask = padded_batch(rows, width, side, model.config.pad_token_id)
                positions = positions_from_mask(mask) if with_positions else None
                output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                               output_attentions=weights, **global_tokens(model, mask))
                assert_rows_equal(output.last_hidden_state, mask, alone,
                                  f"{style}, {side} padding{', reference path' if weights else ''}")


def decoding_cases() -> list:
    return [case for case in CASES if VARIANTS[case.values[0]].model.attention_class.supports_cache
            and VARIANTS[case.values[0]].model.attention_class.supports_causal
            and get_tester(case.values[0]).token_inputs]  # image rows (bos first) refuse left padding


@pytest.mark.parametrize(("model_type", "settings"), decoding_cases())
def test_left_padded_cached_decoding_is_exact_or_refused(model_type, settings):
    attention = VARIANTS[model_type].model.attention_class
    for style in ("gpt2", "llama"):
        model = build(model_type, "model", style, **settings)
        prompts = prompt_rows(model_type, model.config)[:2]
        new = torch.randint(1, model.config.vocab_size, (len(prompts), NEW_TOKENS),
                            generator=torch.Generator().manual_seed(1))
        ids, mask = padded_batch(prompts, len(prompts[0]), "left", model.config.pad_token_id)
        positions = positions_from_mask(mask)
        with torch.no_grad():
            expected = [model(input_ids=torch.cat([p, n])[None], use_cache=False).last_hidden_state[0]
                        for p, n in zip(prompts, new, strict=True)]
            prefix = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            assert_rows_equal(prefix.last_hidden_state, mask, [e[:len(p)] for e, p in zip(expected, prompts,
                                                                                            strict=True)],
                              f"{style}, left-padded prompt")
            cache = prefix.past_key_values
            for step in range(NEW_TOKENS):
                mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
                positions = positions[:, -1:] + 1
                call = dict(input_ids=new[:, step:step + 1], attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True)
                if not attention.supports_left_padding:
                    with pytest.raises(ValueError, match="padding_side"):
                        model(**call)
                    break
                output = model(**call)
                cache = output.past_key_values
                for b, (prompt, row) in enumerate(zip(prompts, expected, strict=True)):
                    torch.testing.assert_close(output.last_hidden_state[b, 0], row[len(prompt) + step], rtol=1e-5,
                                               atol=1e-5, msg=f"{style}, row {b}, new token {step}")


def save_source(folder, kind: str, padding_side: str) -> str:
    """A tiny `kind` source with a tokenizer that pads on `padding_side` (any tokenizer: convert copies it)."""
    write_bert_tokenizer(folder)
    AutoTokenizer.from_pretrained(folder, padding_side=padding_side).save_pretrained(folder)
    make_tiny_source(kind).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("kind", "target"), [
    *((CAUSAL_SOURCES[0], target) for target in ("synthesizer", "memory_compressed", "sparse_transformer")),
    *(("bert", target) for target in ("bigbird", "linformer", "synthesizer")),
])
def test_convert_writes_the_padding_side_the_target_supports(kind, target, tmp_path):
    """Left for a decoder whose attention decodes left-padded batches (generate()), right otherwise (encoders too);
    the source's tokenizer pads on the other side, so the test sees convert set it."""
    attention = VARIANTS[f"efficient_{target}"].model.attention_class
    expected = "left" if kind != "bert" and attention.supports_left_padding else "right"
    source = save_source(tmp_path / kind, kind, padding_side="right" if expected == "left" else "left")
    convert(source, target, out=tmp_path / "out", max_length=256, check=False)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").padding_side == expected
