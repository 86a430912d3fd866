"""Robustness of configs and loading, for every registered variant: every knob is checked wherever a config is made
or loaded, is_decoder means causal, config files are complete and of the right type, seeded tensors a checkpoint lacks
are rebuilt from the seed, empty batches are refused, the CPU path compiles into one graph, output_attentions says
what it costs."""

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_common import VARIANT_NAMES, build, get_tester, styles, with_globals
from testers import TESTERS
from testers.base import BACKBONE_BAD_VALUES
from transformers import AutoConfig, AutoModel, PreTrainedConfig

import hf_efficient
from hf_efficient.auto import VARIANTS
from hf_efficient.core import configuration, modeling

TRANSFORMERS_FIELDS = {field.name for field in dataclasses.fields(PreTrainedConfig)}


def knob_cases() -> list:
    """Every field of every variant's config class (the backbone's and the variant's own), read from the classes."""
    return [pytest.param(model_type, field.name, id=f"{model_type}-{field.name}")
            for model_type in VARIANT_NAMES for field in dataclasses.fields(VARIANTS[model_type].config)
            if field.name not in TRANSFORMERS_FIELDS]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model of a variant (its first style), once per variant."""
    folders = {}

    def folder(model_type: str, style: str | None = None):
        style = style or styles(model_type)[0]
        if (model_type, style) not in folders:
            path = tmp_path_factory.mktemp(f"{model_type}-{style}")
            build(model_type, "model", style).save_pretrained(path)
            folders[model_type, style] = path
        return folders[model_type, style]

    return folder


@pytest.mark.parametrize(("model_type", "knob"), knob_cases())
def test_every_knob_is_validated_wherever_a_config_is_made_or_loaded(model_type, knob, saved):
    tester = get_tester(model_type)
    bad_values = {**BACKBONE_BAD_VALUES, **tester.bad_values}
    if knob not in bad_values:
        pytest.fail(f"{model_type}: the config field {knob!r} has no bad value; validate it and declare one in "
                    "tests/testers (the tester's bad_values, or BACKBONE_BAD_VALUES for a backbone field)")
    override, names_it = {knob: bad_values[knob]}, rf"\b{knob}\b"
    with pytest.raises(ValueError, match=names_it):
        tester.config(styles(model_type)[0], **override)
    folder = saved(model_type)
    with pytest.raises(ValueError, match=names_it):
        VARIANTS[model_type].model.from_pretrained(folder, **override)
    with pytest.raises(ValueError, match=names_it):
        AutoConfig.from_pretrained(folder, **override)


def test_a_changed_config_is_checked_again_before_it_is_saved(tmp_path):
    model = build("efficient_performer", "model", "bert")
    model.config.kernel = "bogus"
    with pytest.raises(ValueError, match="kernel"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def later_token_changes_earlier_outputs(model, tester) -> bool:
    inputs = tester.inputs(model.config, batch=1, padded=False)
    changed = inputs["input_ids"].clone()
    cut = changed.shape[1] // 2
    changed[0, cut] = changed[0, cut] % (model.config.vocab_size - 1) + 1
    with torch.no_grad():
        before = model(**inputs, use_cache=False).last_hidden_state
        after = model(input_ids=changed, attention_mask=inputs["attention_mask"], use_cache=False).last_hidden_state
    return not torch.allclose(after[:, :cut], before[:, :cut], rtol=0, atol=1e-6)


def test_is_decoder_makes_the_model_causal(saved):
    tester = TESTERS["efficient_sparse_transformer"]
    model_class = VARIANTS["efficient_sparse_transformer"].model
    config = tester.config(is_decoder=True)
    assert config.is_causal and config.is_decoder
    assert not later_token_changes_earlier_outputs(model_class(config).eval(), tester)
    encoder = model_class(tester.config()).eval()
    assert later_token_changes_earlier_outputs(encoder, tester), "the check must see the future leak of an encoder"
    loaded = model_class.from_pretrained(saved("efficient_sparse_transformer", "bert"), is_decoder=True).eval()
    assert loaded.config.is_causal and not later_token_changes_earlier_outputs(loaded, tester)
    assert AutoConfig.from_pretrained(saved("efficient_sparse_transformer", "bert"), is_decoder=True).is_causal
    assert not tester.config(is_decoder=False).is_causal


def test_is_decoder_and_is_causal_must_agree(saved):
    tester = TESTERS["efficient_sparse_transformer"]
    with pytest.raises(ValueError, match="is_decoder=True and is_causal=False disagree"):
        tester.config(is_decoder=True, is_causal=False)
    with pytest.raises(ValueError, match="disagree"):
        AutoModel.from_pretrained(saved("efficient_sparse_transformer", "bert"), is_decoder=True, is_causal=False)
    with pytest.raises(ValueError, match="disagree"):
        tester.config("gpt2", is_decoder=False)


@pytest.mark.parametrize("model_type", ["efficient_bigbird", "efficient_linformer"])
def test_is_decoder_is_refused_by_encoder_only_variants(model_type, saved):
    with pytest.raises(ValueError, match="is_causal=False"):
        get_tester(model_type).config(is_decoder=True)
    with pytest.raises(ValueError, match="is_causal=False"):
        AutoModel.from_pretrained(saved(model_type), is_decoder=True)


def test_a_config_file_of_another_model_type_is_refused(saved):
    folder = saved("efficient_longformer")
    for load in (hf_efficient.EfficientPerformerConfig.from_pretrained,
                 hf_efficient.EfficientPerformerModel.from_pretrained):
        with pytest.raises(ValueError, match="model_type='efficient_longformer'.*'efficient_performer'"):
            load(folder)


@pytest.mark.parametrize("field", configuration.REQUIRED_IN_FILES)
def test_a_config_file_without_a_required_field_is_refused(field, saved, tmp_path):
    source = saved("efficient_longformer")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    del config[field]
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained,
                 hf_efficient.EfficientLongformerConfig.from_pretrained):
        with pytest.raises(ValueError, match=rf"lacks \['{field}'\]"):
            load(tmp_path)


def test_defaults_still_serve_a_config_made_in_python():
    config = hf_efficient.EfficientLongformerConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.is_causal) == (768, 12, False)


# seeded tensors: (variant, config overrides) covering every kind a variant declares in `seeded_tensors`
SEEDED_CASES = {
    "performer": ("efficient_performer", {}),
    "reformer": ("efficient_reformer", dict(attn_layers="lsh")),
    "synthesizer-fixed": ("efficient_synthesizer", dict(synthesizer_type="random+factorized_random+vanilla",
                                                         mixture_weights=None, random_trainable=False)),
    "synthesizer-trainable": ("efficient_synthesizer", dict(synthesizer_type="random+factorized_random",
                                                             mixture_weights=None)),
    "routing": ("efficient_routing", {}),
}


def test_every_variant_with_seeded_tensors_has_a_case():
    declared = {name for name in VARIANT_NAMES if VARIANTS[name].model.seeded_tensors}
    assert declared == {model_type for model_type, _ in SEEDED_CASES.values()}


def seeded_names(model) -> list[str]:
    return [name for name in model.state_dict() if name.endswith(type(model).seeded_tensors)]


@pytest.mark.parametrize("case", SEEDED_CASES)
def test_seeded_tensors_missing_from_a_checkpoint_are_rebuilt_from_the_seed(case, tmp_path, caplog):
    model_type, overrides = SEEDED_CASES[case]
    config = get_tester(model_type).config(**overrides)
    torch.manual_seed(0)
    model = VARIANTS[model_type].model(config)
    with torch.no_grad():  # trained weights: what the checkpoint holds must load as saved
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(tmp_path)
    fresh = VARIANTS[model_type].model(config).state_dict()  # the seeded tensors of a new model of this config
    removed = seeded_names(model)
    assert removed
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in removed}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="hf_efficient"):
            caplog.clear()
            loaded = AutoModel.from_pretrained(tmp_path).state_dict()
        assert f"{removed[0]}, " in caplog.text and "rebuilt from the config's seed" in caplog.text
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(loaded[name], fresh[name] if name in removed else tensor, rtol=0, atol=0,
                                       msg=name)


def test_performer_features_of_another_size_are_rebuilt_from_the_seed(saved, caplog):
    folder = saved("efficient_performer")
    expected = VARIANTS["efficient_performer"].model(get_tester("efficient_performer").config(nb_features=16))
    loads = []
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="hf_efficient"):
            caplog.clear()
            loads.append(AutoModel.from_pretrained(folder, nb_features=16, ignore_mismatched_sizes=True))
        assert "layers.0.self_attn.random_features" in caplog.text
    for layer in range(expected.config.num_hidden_layers):
        features = [m.layers[layer].self_attn.random_features for m in (*loads, expected)]
        assert features[0].shape == (16, expected.config.head_dim) and torch.isfinite(features[0]).all()
        assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])


def test_a_redraw_is_kept_by_the_seed():
    model = build("efficient_performer", "model", "bert")
    model.redraw_features(seed=11)
    assert model.config.feature_seed == 11
    rebuilt = VARIANTS["efficient_performer"].model(model.config)
    assert torch.equal(rebuilt.layers[1].self_attn.random_features, model.layers[1].self_attn.random_features)


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_an_empty_batch_is_refused_at_the_entry(model_type):
    model = build(model_type, "model", styles(model_type)[0])
    for shape in ((0, 5), (2, 0)):
        with pytest.raises(ValueError, match=rf"\({shape[0]}, {shape[1]}\); pass at least one row"):
            model(**get_tester(model_type).empty_inputs(model.config, *shape))


@pytest.mark.parametrize(("model_type", "style"), [(m, s) for m in VARIANT_NAMES for s in dict.fromkeys(
    [styles(m)[0], styles(m)[-1]])])
def test_the_cpu_path_compiles_into_one_graph(model_type, style):
    """fullgraph=True fails on any graph break; the "eager" backend runs the captured graph with eager kernels.
    Each direction a variant has (bert: absolute positions; llama: causal, rotary, grouped KV heads), padded rows,
    global tokens where the variant has them."""
    model = build(model_type, "model", style)
    inputs = with_globals(model, get_tester(model_type).inputs(model.config))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).last_hidden_state, model(**inputs).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_value_checks_still_raise_under_compile():
    model = build("efficient_longformer", "model", "bert")
    inputs = get_tester("efficient_longformer").inputs(model.config)
    limit = model.config.max_position_embeddings
    beyond = torch.full_like(inputs["input_ids"], limit)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(**inputs, position_ids=beyond)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(RuntimeError, match="max_position_embeddings"):
        compiled(**inputs, position_ids=beyond)
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        compiled(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"] * 2)


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_output_attentions_says_what_it_costs(model_type, monkeypatch, caplog):
    if not get_tester(model_type).attention_weights_per_layer:
        pytest.skip(f"{model_type}'s output_attentions is not one (batch, heads, queries, keys) map per layer "
                    "(declared by its tester); its own tests check the maps")
    model = build(model_type, "model", styles(model_type)[0])
    inputs = with_globals(model, get_tester(model_type).inputs(model.config))
    with torch.no_grad():
        weights = model(**inputs, output_attentions=True).attentions
    size = sum(w.numel() * w.element_size() for w in weights)
    batch, heads, length, columns = weights[0].shape
    stated = f"(batch {batch} x {heads} heads x {length} x {columns} x {len(weights)} layers x 4 bytes)"
    for threshold, warned in ((size - 1, True), (size, False)):
        monkeypatch.setattr(modeling, "LARGE_ATTENTION_WEIGHTS", threshold)
        logging.Logger.warning_once.cache_clear()
        with caplog.at_level(logging.WARNING, logger="hf_efficient"), torch.no_grad():
            caplog.clear()
            model(**inputs, output_attentions=True)
        assert (stated in caplog.text) is warned, caplog.text
