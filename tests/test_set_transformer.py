"""The Set Transformer's own properties, on random inputs in fp32: the encoder is permutation-equivariant, the pooled
output permutation-invariant, padding (anywhere, with any values) changes nothing, ISAB's maps are n x m, MAB is the
paper's equation (checked against a dense reference written here, and SAB against the package's post-norm block),
the heads' losses are transformers', and what a set model can't do raises."""

import sys
from pathlib import Path

import pytest
import torch
from testers import TESTERS
from tiny_sources import save_tiny_source
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForQuestionAnswering

import hf_efficient
from hf_efficient.attention.full import FullAttention
from hf_efficient.conversion import ConversionError, convert
from hf_efficient.core.layers import EfficientBlock

TESTER = TESTERS["efficient_set_transformer"]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def model_of(head: str = "model", seed: int = 0, **overrides):
    config = TESTER.config(**overrides)
    torch.manual_seed(seed)
    classes = {"model": hf_efficient.EfficientSetTransformerModel,
               "sequence_classification": hf_efficient.EfficientSetTransformerForSequenceClassification,
               "token_classification": hf_efficient.EfficientSetTransformerForTokenClassification}
    return classes[head](config).eval()


def features(batch: int = 2, size: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, size, TESTER.config().input_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("block", ["isab", "sab"])
def test_encoder_is_permutation_equivariant_and_pooling_invariant(block):
    model = model_of(encoder_block=block)
    x = features()
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, 5:11] = 0
    order = torch.randperm(23, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(input_features=x, attention_mask=mask)
        permuted = model(input_features=x[:, order], attention_mask=mask[:, order])
    real = mask[:, order].bool()
    torch.testing.assert_close(permuted.last_hidden_state[real], out.last_hidden_state[:, order][real], **TOLERANCE)
    torch.testing.assert_close(permuted.pooler_output, out.pooler_output, **TOLERANCE)
    # the check can fail: without the permutation of the outputs they differ
    assert (permuted.last_hidden_state - out.last_hidden_state).abs().max() > 1e-2
    classifier = model_of("sequence_classification", encoder_block=block)
    with torch.no_grad():
        torch.testing.assert_close(classifier(input_features=x[:, order], attention_mask=mask[:, order]).logits,
                                   classifier(input_features=x, attention_mask=mask).logits, **TOLERANCE)


@pytest.mark.parametrize(("block", "backend"), [("isab", "blocked"), ("isab", "reference"), ("sab", "blocked")])
def test_a_padded_set_gives_the_outputs_of_the_set_alone(block, backend):
    model = model_of(encoder_block=block, attention_backend=backend)
    sizes = (9, 17, 4)
    sets = [features(1, n, seed=n)[0] for n in sizes]
    width = 21
    batch = torch.randn(len(sizes), width, TESTER.config().input_size) * 1e3  # padding values of any size
    mask = torch.zeros(len(sizes), width, dtype=torch.long)
    for row, (elements, start) in enumerate(zip(sets, (0, 2, 11), strict=True)):  # padding before, between, after
        places = torch.arange(start, start + 2 * len(elements), 2) % width if row == 0 else \
            torch.arange(start, start + len(elements))
        batch[row, places], mask[row, places] = elements, 1
    with torch.no_grad():
        padded = model(input_features=batch, attention_mask=mask, output_attentions=backend == "reference")
        for row, elements in enumerate(sets):
            alone = model(input_features=elements[None])
            torch.testing.assert_close(padded.last_hidden_state[row][mask[row].bool()], alone.last_hidden_state[0],
                                       **TOLERANCE)
            torch.testing.assert_close(padded.pooler_output[row], alone.pooler_output[0], **TOLERANCE)


def test_isab_attention_maps_are_n_by_m_and_ignore_padding():
    model = model_of(encoder_block="isab", num_inducing_points=4, num_seeds=2)
    n, mask = 37, torch.ones(2, 37, dtype=torch.long)
    mask[1, 30:] = 0
    with torch.no_grad():
        out = model(input_features=features(2, n), attention_mask=mask, output_attentions=True)
    heads = model.config.num_attention_heads
    assert len(out.attentions) == model.config.num_hidden_layers
    for to_inducing, to_set in out.attentions:
        assert to_inducing.shape == (2, heads, 4, n) and to_set.shape == (2, heads, n, 4)  # never n x n
        assert (to_inducing[1, ..., 30:] == 0).all()
        torch.testing.assert_close(to_inducing.sum(-1), torch.ones(2, heads, 4), **TOLERANCE)
    pma, *decoder = out.decoder_attentions
    assert pma.shape == (2, heads, 2, n) and (pma[1, ..., 30:] == 0).all()
    assert [tuple(w.shape) for w in decoder] == [(2, heads, 2, 2)] * model.config.num_decoder_layers


def test_inducing_points_and_seeds_query_at_the_scale_of_the_set():
    """With the layer norms a set element enters each attention at unit scale per entry; the inducing points and PMA's
    seeds take an element's place as queries, so at init their queries are as large as the elements'. Drawn at
    initializer_range they were ~50x smaller: their attention over the set was a plain mean, with a second-order
    gradient, and ISAB did not learn the set tasks (benchmarks/set_tasks.py)."""
    model = model_of(initializer_range=0.02)  # the config's default, not the tiny tester's

    def rms(tensor: torch.Tensor) -> float:
        return tensor.pow(2).mean().sqrt().item()

    with torch.no_grad():
        out = model(input_features=features(2, 23), output_hidden_states=True)
        for index, layer in enumerate(model.layers):
            if index > 0:  # the first block's input is the raw projection, not a normed hidden state
                query = layer.summarise.self_attn.q_proj
                assert 0.5 < rms(query(layer.inducing_points)) / rms(query(out.hidden_states[index])) < 2
        query = model.decoder.pma.mab.self_attn.q_proj
        assert 0.5 < rms(query(model.decoder.pma.seeds)) / rms(query(out.last_hidden_state)) < 2


def dense_mab(mab, x: torch.Tensor, y: torch.Tensor, layer_norm: bool) -> torch.Tensor:
    """The paper's MAB(X, Y) = LN(H + rFF(H)), H = LN(X + Multihead(X, Y, Y)), written out per head."""
    attention = mab.self_attn
    heads, d = attention.num_heads, attention.head_dim
    q, k, v = attention.q_proj(x), attention.k_proj(y), attention.v_proj(y)
    outputs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(-1, -2) / d**0.5, dim=-1)
        outputs.append(weights @ v[..., part])
    hidden = x + attention.o_proj(torch.cat(outputs, -1))
    hidden = mab.attention_norm(hidden) if layer_norm else hidden
    rff = mab.mlp.down_proj(torch.relu(mab.mlp.up_proj(hidden)))
    return mab.mlp_norm(hidden + rff) if layer_norm else hidden + rff


@pytest.mark.parametrize("layer_norm", [True, False])
def test_mab_is_the_papers_equation(layer_norm):
    model = model_of(use_layer_norm=layer_norm)
    mab = model.layers[0].summarise
    x, y = torch.randn(2, 5, 32), torch.randn(2, 11, 32)
    with torch.no_grad():
        ours, _ = mab(x, y, None, False)
        torch.testing.assert_close(ours, dense_mab(mab, x, y, layer_norm), **TOLERANCE)
    assert all(isinstance(norm, torch.nn.Identity) for norm in (mab.attention_norm, mab.mlp_norm)) != layer_norm


def test_sab_is_a_post_norm_transformer_layer_without_positions():
    """SAB(X) = MAB(X, X) is exactly the package's post-norm (BERT) block with full attention."""
    model = model_of(encoder_block="sab")
    block = EfficientBlock(model.config, 0, FullAttention).eval()
    block.load_state_dict(model.layers[0].mab.state_dict())
    x, keep = torch.randn(2, 13, 32), torch.ones(2, 13, dtype=torch.bool)
    keep[0, 9:] = False
    with torch.no_grad():
        ours, _ = model.layers[0](x, keep)
        theirs, _ = block(x, attention_mask=keep)
    torch.testing.assert_close(ours[keep], theirs[keep], **TOLERANCE)


@pytest.mark.parametrize(("num_labels", "labels", "problem_type", "loss"), [
    (1, torch.tensor([0.5, -1.0]), "regression", lambda logits, y: torch.nn.functional.mse_loss(logits[:, 0], y)),
    (3, torch.tensor([2, 0]), "single_label_classification", torch.nn.functional.cross_entropy),
    (3, torch.tensor([[1.0, 0, 1], [0, 1, 0]]), "multi_label_classification",
     torch.nn.functional.binary_cross_entropy_with_logits),
])
def test_set_classification_and_regression_use_transformers_losses(num_labels, labels, problem_type, loss):
    model = model_of("sequence_classification", num_labels=num_labels)
    out = model(input_features=features(), labels=labels)
    assert model.config.problem_type == problem_type and out.logits.shape == (2, num_labels)
    torch.testing.assert_close(out.loss, loss(out.logits, labels))


def test_per_element_head_labels_every_real_element():
    model = model_of("token_classification", num_labels=3)
    assert model.model.decoder is None  # the encoder alone: no pooling parameters without a gradient
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, 15:] = 0
    labels = torch.randint(0, 3, (2, 23), generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, -100)
    out = model(input_features=features(), attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 23, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[mask.bool()],
                                                                           labels[mask.bool()]))


def test_heads_a_set_model_cannot_serve_raise():
    config = TESTER.config()
    for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForQuestionAnswering):
        with pytest.raises(ValueError, match="Unrecognized configuration class.*EfficientSetTransformerConfig"):
            auto.from_config(config)
    with pytest.raises(ValueError, match="a set has no order"):
        TESTER.config(is_decoder=True)
    with pytest.raises(ValueError, match="a set has no positions; use position_embedding_type='none'"):
        TESTER.config(position_embedding_type="rotary")
    with pytest.raises(ValueError, match="not tokens: pass input_features"):
        AutoModel.from_config(config)(inputs_embeds=torch.randn(1, 3, 32))


def test_conversion_refuses_a_set_model(tmp_path):
    save_tiny_source("bert", tmp_path / "bert")
    with pytest.raises(ConversionError, match="efficient_set_transformer can't be converted.*not tokens"):
        convert(str(tmp_path / "bert"), "set_transformer", out=tmp_path / "out", max_length=128)
    assert not (tmp_path / "out").exists()


def test_set_task_benchmark_runs_and_trains(capsys):
    """The benchmark's smoke test: a few steps of each model on each task, tiny."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import set_tasks

    set_tasks.main(["--steps", "3", "--batch", "4", "--max-size", "12", "--hidden", "16", "--eval-batches", "1"])
    table = capsys.readouterr().out
    for task in set_tasks.TASKS:
        assert task in table
    assert "isab" in table and "sab" in table


def test_set_scaling_benchmark_runs_and_reports_out_of_memory(capsys, monkeypatch):
    """The scaling benchmark's smoke test on CPU; an OOM at one size is printed as OOM and ends that model's row."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import set_scaling

    real = set_scaling.run_case

    def out_of_memory(name, size, *args):
        if name == "sab":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(name, size, *args)

    monkeypatch.setattr(set_scaling, "run_case", out_of_memory)
    set_scaling.main(["--device", "cpu", "--sizes", "8,16", "--hidden", "8", "--repeats", "1"])
    table = capsys.readouterr().out.split("\n\n")[-1]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert sorted(rows) == sorted(set_scaling.MODELS)
    assert rows["sab"].endswith("| OOM | skipped (OOM at a smaller size) |")
    for name in ("isab16", "isab32", "bert_sdpa"):
        assert rows[name].count(" ms / n/a") == 2
    with pytest.raises(SystemExit):
        set_scaling.main(["--models", "sab,bogus"])
