"""EfficientETC: the four attention pieces, relative labels and hard/soft masks against a naive per-pair reference,
padding in both streams, the global-input helper, the BlockMask's tiles, conversion and the GPU path."""

import pytest
import torch
from block_mask_emulation import kernel_keep
from testers import TESTERS

from hf_efficient.attention.global_local import (
    global_local_block_mask,
    global_local_flex,
    pair_keep,
    pair_label,
)
from hf_efficient.models.etc import (
    EfficientETCConfig,
    EfficientETCForMaskedLM,
    EfficientETCModel,
    build_global_input,
)
from hf_efficient.models.etc.modeling_etc import EfficientETCAttention, GlobalLocalLayout

TESTER = TESTERS["efficient_etc"]
HARD = [(False, False), (True, False), (False, True), (True, True)]


def config(**overrides) -> EfficientETCConfig:
    return TESTER.config("bert", **{"local_radius": 2, "relative_position_max_distance": 2,
                                    "relative_vocab_size": 9, **overrides})


def random_layout(batch=2, num_global=3, length=13, seed=0) -> GlobalLocalLayout:
    """Sorted segments with a -1 run, padding at the end of the long row 1 and of the global row 1."""
    generator = torch.Generator().manual_seed(seed)
    segments = torch.sort(torch.randint(-1, num_global, (batch, length), generator=generator), dim=1).values
    long_real = torch.ones(batch, length, dtype=torch.bool)
    long_real[1, length - 4:] = False
    global_real = torch.ones(batch, num_global, dtype=torch.bool)
    global_real[1, -1] = False
    segments[1] = segments[1].clamp(max=num_global - 2)
    own = torch.arange(num_global).expand(batch, -1)
    return GlobalLocalLayout(num_global, torch.cat([own, segments], 1), torch.cat([global_real, long_real], 1))


def naive_attention(query, key, value, table, bias, layout, radius, max_distance, hard_g2l, hard_l2g, scaling):
    """Pair by pair from the paper's definitions: which piece the pair is in, whether it is kept, its label."""
    batch, heads, length, _ = query.shape
    g = layout.num_global
    out = torch.zeros_like(query)
    for b in range(batch):
        for i in range(length):
            if not layout.real[b, i]:
                continue
            logits = torch.full((heads, length), float("-inf"), dtype=query.dtype)
            for j in range(length):
                if not layout.real[b, j]:
                    continue
                same = bool(layout.segments[b, i] == layout.segments[b, j])
                if i < g and j < g:  # g2g
                    kept, label = True, min(max(j - i, -max_distance), max_distance) + max_distance
                elif i >= g and j >= g:  # l2l
                    kept, label = abs(i - j) <= radius, min(max(j - i, -max_distance), max_distance) + max_distance
                elif i >= g:  # l2g
                    kept, label = same or not hard_l2g, 2 * max_distance + 1 + same
                else:  # g2l
                    kept, label = same or not hard_g2l, 2 * max_distance + 3 + same
                if kept:
                    logits[:, j] = ((query[b, :, i] * key[b, :, j]).sum(-1) + (query[b, :, i] * table[label]).sum(-1)
                                    + bias[label]) * scaling
            out[b, :, i] = torch.einsum("hk,hkd->hd", logits.softmax(-1), value[b])
    return out.transpose(1, 2)


@pytest.mark.parametrize(("hard_g2l", "hard_l2g"), HARD)
@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_four_pieces_equal_the_naive_reference(backend, hard_g2l, hard_l2g):
    cfg = config(use_hard_g2l_mask=hard_g2l, use_hard_l2g_mask=hard_l2g, attention_backend=backend)
    torch.manual_seed(0)
    attention = EfficientETCAttention(cfg, 0).eval()
    with torch.no_grad():
        attention.relative_positions.key.normal_(0, 0.5)
        attention.relative_positions.bias.normal_(0, 0.5)
    layout = random_layout()
    hidden = torch.randn(2, layout.real.shape[1], cfg.hidden_size)
    with torch.no_grad():
        out, _ = attention(hidden, layout=layout)
        query, key, value = attention.project(hidden, None)
        expected = naive_attention(query, key, value, attention.relative_positions.key,
                                   attention.relative_positions.bias, layout, cfg.local_radius,
                                   cfg.relative_position_max_distance, hard_g2l, hard_l2g, attention.scaling)
        expected = attention.merge_heads(expected)
    torch.testing.assert_close(out[layout.real], expected[layout.real], rtol=1e-5, atol=1e-5)


def test_labels_clip_at_the_max_distance_and_name_the_cross_pieces():
    positions = torch.arange(12)
    segments = torch.tensor([0, 1, 2] + [0] * 3 + [1] * 3 + [-1] * 3)
    label = pair_label(positions[:, None], positions[None, :], segments[:, None], segments[None, :], 3, 2)
    assert label[5, 11].item() == label[5, 7].item() == 4  # long distance 6 and 2 -> 2D
    assert label[11, 3].item() == 0 and label[4, 4].item() == 2  # clipped at -D; distance 0 is D
    assert label[0, 2].item() == 4  # g2g distances clip too
    assert label[3, 0].item() == 6 and label[3, 1].item() == 5  # l2g own / other: 2D+2, 2D+1
    assert label[0, 3].item() == 8 and label[1, 3].item() == 7  # g2l own / other: 2D+4, 2D+3
    assert label[11, 0].item() == 5  # a token of no segment: "other" for every global token


def test_hard_masks_drop_only_the_cross_pairs_of_other_segments():
    positions = torch.arange(9)
    segments = torch.tensor([0, 1] + [0] * 3 + [1] * 2 + [-1] * 2)
    real = torch.ones(9, dtype=torch.bool)
    for hard_g2l, hard_l2g in HARD:
        keep = pair_keep(positions[:, None], positions[None, :], segments[:, None], segments[None, :], real[None, :],
                         2, 100, hard_g2l, hard_l2g)
        assert keep[:2, :2].all() and keep[2:, 2:].all()  # g2g, and l2l with a covering radius
        assert keep[0, 5].item() == (not hard_g2l) and keep[0, 2].item()  # g2l to another / its own segment
        assert keep[5, 0].item() == (not hard_l2g) and keep[5, 1].item()  # l2g to another / its own global
        assert keep[7, 0].item() == (not hard_l2g)  # no segment: only the soft mask reaches the globals


def test_local_radius_bounds_the_long_to_long_piece():
    positions = torch.arange(10)
    keep = pair_keep(positions[:, None], positions[None, :], positions[:, None] * 0 - 1, positions[None, :] * 0 - 1,
                     torch.ones(1, 10, dtype=torch.bool), 0, 3, False, False)
    assert torch.equal(keep, (positions[:, None] - positions[None, :]).abs() <= 3)


def gradients(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def model_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TESTER.config().vocab_size, (2, 29), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 20:] = 0
    input_ids[attention_mask == 0] = 0
    dots = torch.zeros_like(input_ids, dtype=torch.bool)
    dots[:, [6, 13, 17]] = True
    input_ids[dots & attention_mask.bool()] = 2  # sentence ends
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            **build_global_input(input_ids, 2, attention_mask)}


@pytest.mark.parametrize(("hard_g2l", "hard_l2g"), HARD)
def test_blocked_equals_reference_with_globals_outputs_and_gradients(hard_g2l, hard_l2g):
    torch.manual_seed(0)
    model = EfficientETCForMaskedLM(config(use_hard_g2l_mask=hard_g2l, use_hard_l2g_mask=hard_l2g)).train()
    inputs = model_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for backend in ("reference", "blocked"):
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), gradients(model)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(results["blocked"][0][real], results["reference"][0][real], rtol=1e-5, atol=2e-5)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert results["reference"][1]["model.layers.0.self_attn.relative_positions.key"][5:].abs().sum() > 0, \
        "the cross labels (2D+1 ..) must be trained when there are global tokens"


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_padding_in_both_streams_leaves_real_outputs_unchanged(backend):
    torch.manual_seed(0)
    model = EfficientETCModel(config(use_hard_g2l_mask=True, attention_backend=backend)).eval()
    inputs = {k: v[:1] for k, v in model_inputs().items()}
    pad_long, pad_global = 7, 2
    padded = {
        "input_ids": torch.nn.functional.pad(inputs["input_ids"], (0, pad_long)),
        "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, pad_long)),
        "segment_ids": torch.nn.functional.pad(inputs["segment_ids"], (0, pad_long), value=1),
        "global_input_ids": torch.nn.functional.pad(inputs["global_input_ids"], (0, pad_global)),
        "global_input_mask": torch.nn.functional.pad(inputs["global_input_mask"], (0, pad_global)),
    }
    with torch.no_grad():
        alone, in_padding = model(**inputs), model(**padded)
    length, count = inputs["input_ids"].shape[1], inputs["global_input_ids"].shape[1]
    torch.testing.assert_close(in_padding.last_hidden_state[:, :length], alone.last_hidden_state, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(in_padding.global_last_hidden_state[:, :count], alone.global_last_hidden_state,
                               rtol=1e-5, atol=1e-5)


def test_global_tokens_change_the_long_outputs_and_hard_l2g_confines_them():
    torch.manual_seed(0)
    inputs = {k: v[:1] for k, v in model_inputs().items()}
    changed = {**inputs, "global_input_ids": inputs["global_input_ids"].clone()}
    changed["global_input_ids"][0, 0] = 50  # the first sentence's global token
    first = inputs["segment_ids"][0] == 0
    far = inputs["segment_ids"][0] == 3
    for hard in (False, True):
        model = EfficientETCModel(config(use_hard_l2g_mask=hard, num_hidden_layers=1, local_radius=1)).eval()
        with torch.no_grad():
            before, after = model(**inputs).last_hidden_state, model(**changed).last_hidden_state
        assert (after[0, first] - before[0, first]).abs().amax() > 1e-3
        moved = (after[0, far] - before[0, far]).abs().amax()
        assert (moved < 1e-6) if hard else (moved > 1e-3), f"hard_l2g={hard}: the last sentence moved {moved}"


def test_build_global_input_from_sentence_ends_and_blocks():
    ids = torch.tensor([[101, 5, 6, 9, 7, 9, 8, 102], [101, 5, 9, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    built = build_global_input(ids, [9, 102], mask, global_token_id=1)
    assert built["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 1, -1, -1, -1, -1]]
    assert built["global_input_ids"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert built["global_input_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    blocks = build_global_input(ids, attention_mask=mask, block_size=3)
    assert blocks["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 1, -1, -1, -1, -1]]
    assert blocks["global_input_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="exactly one"):
        build_global_input(ids, [9], block_size=3)
    with pytest.raises(ValueError, match="block_size"):
        build_global_input(ids, block_size=0)


def test_build_global_input_with_a_tokenizer(tmp_path):
    from tiny_sources import write_bert_tokenizer
    from transformers import AutoTokenizer

    write_bert_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    if tokenizer.convert_tokens_to_ids(".") == tokenizer.unk_token_id:
        with pytest.raises(ValueError, match="has no token"):
            build_global_input(torch.tensor([[1, 2]]), tokenizer)
        return
    encoded = tokenizer(["the cat sat. the dog ran. end"], return_tensors="pt")
    built = build_global_input(encoded["input_ids"], tokenizer, encoded["attention_mask"])
    assert built["global_input_ids"].shape[1] == int(built["segment_ids"].max()) + 1 >= 3


def test_inputs_the_model_cannot_honour_raise_clear_errors():
    model = EfficientETCModel(config()).eval()
    inputs = model_inputs()
    with pytest.raises(ValueError, match="segment_ids"):
        model(input_ids=inputs["input_ids"], global_input_ids=inputs["global_input_ids"])
    with pytest.raises(ValueError, match="global_input_ids"):
        model(input_ids=inputs["input_ids"], segment_ids=inputs["segment_ids"])
    with pytest.raises(ValueError, match=r"\[-1, 4\)"):
        model(**{**inputs, "segment_ids": inputs["segment_ids"] + 5})
    with pytest.raises(ValueError, match="separate input"):
        model(input_ids=inputs["input_ids"], global_attention_mask=torch.ones_like(inputs["input_ids"]))
    with pytest.raises(ValueError, match="cannot be causal"):
        EfficientETCModel(config(is_causal=True))
    with pytest.raises(ValueError, match="rotary"):
        config(position_embedding_type="rotary")
    with pytest.raises(ValueError, match="at least 2 \\* 4 \\+ 5"):
        config(relative_position_max_distance=4, relative_vocab_size=12)
    with pytest.raises(TypeError, match="segment_idz"):
        EfficientETCForMaskedLM(config())(input_ids=inputs["input_ids"], segment_idz=inputs["segment_ids"])


@pytest.mark.parametrize(("hard_g2l", "hard_l2g"), HARD)
def test_block_mask_tiles_keep_exactly_the_pattern(hard_g2l, hard_l2g):
    """The tile tables with mask_mod, as a block-sparse kernel reads them, keep every kept pair of a real query and
    nothing else (tile 16 so that the 300-token stream spans many tiles)."""
    generator = torch.Generator().manual_seed(0)
    batch, num_global, length, tile = 2, 40, 300, 16
    segments = torch.sort(torch.randint(-1, num_global, (batch, length - num_global), generator=generator)).values
    real = torch.ones(batch, length, dtype=torch.bool)
    real[1, 250:] = False
    real[1, 30:num_global] = False
    segments = torch.cat([torch.arange(num_global).expand(batch, -1), segments], 1)
    mask = global_local_block_mask(segments, real, num_global, 5, hard_g2l, hard_l2g, tile=tile)
    kept = kernel_keep(mask, 1)[:, 0]
    positions = torch.arange(length)
    expected = pair_keep(positions[None, :, None], positions[None, None, :], segments[:, :, None],
                         segments[:, None, :], real[:, None, :], num_global, 5, hard_g2l, hard_l2g)
    rows = real[:, :, None]
    assert torch.equal(kept & rows, expected & rows)
    partial = mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum()
    assert partial < batch * (length // tile + 1) ** 2 * 0.6, "the mask should skip most tiles"


def test_flex_forward_equals_reference_on_cpu():
    """FlexAttention's eager CPU forward (every pair through mask_mod and score_mod) against the reference path."""
    torch.manual_seed(0)
    model = EfficientETCModel(config(use_hard_g2l_mask=True, head_dim=16)).eval()
    inputs = model_inputs()
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).last_hidden_state
        attention = model.layers[0].self_attn
        layout = model.global_layout(inputs["global_input_ids"], inputs["global_input_mask"], inputs["segment_ids"],
                                     inputs["attention_mask"].bool(), 2, 29, torch.device("cpu"))
        hidden = torch.randn(2, layout.real.shape[1], model.config.hidden_size)
        query, key, value = attention.project(hidden, None)
        relative = torch.randn(*query.shape[:3], model.config.relative_vocab_size)
        segments = torch.nn.functional.pad(layout.segments, (0, 256 - layout.real.shape[1]))
        real = torch.nn.functional.pad(layout.real, (0, 256 - layout.real.shape[1]))
        mask = global_local_block_mask(segments, real, layout.num_global, model.config.local_radius, True, False)
        out = global_local_flex(query, key, value, relative, segments, mask, layout.num_global,
                                model.config.relative_position_max_distance, attention.scaling, compiled=False)
        from hf_efficient.attention.global_local import global_local_reference

        expected, _ = global_local_reference(query, key, value, relative, layout.segments, layout.real,
                                             layout.num_global, model.config.local_radius,
                                             model.config.relative_position_max_distance, True, False,
                                             attention.scaling)
    assert torch.isfinite(reference).all()
    real_rows = layout.real
    torch.testing.assert_close(out[real_rows], expected[real_rows], rtol=1e-5, atol=1e-5)


def test_converted_bert_with_relative_labels_on_and_a_covering_radius_equals_its_source(tmp_path):
    """Conversion zeroes the relative tables: with D = 12 labels in use and no global input, a radius covering the
    input reproduces BERT; the new parameters are exactly those tables."""
    from tiny_sources import tiny_source

    from hf_efficient.conversion import convert_model
    from hf_efficient.conversion.families import family_of

    source = tiny_source("bert").eval()
    result = convert_model(source, family_of(source.config), "etc", head="masked_lm", local_radius=64,
                           relative_position_max_distance=12, relative_vocab_size=32)
    assert sorted(result.new_parameters) == sorted(
        f"model.layers.{i}.self_attn.relative_positions.{n}" for i in range(2) for n in ("key", "bias"))
    ids = torch.randint(1, 99, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(result.model(input_ids=ids).logits, source(input_ids=ids).logits, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize(("hard_g2l", "hard_l2g"), HARD)
def test_flex_equals_reference_on_gpu_outputs_and_gradients(hard_g2l, hard_l2g):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = EfficientETCForMaskedLM(config(use_hard_g2l_mask=hard_g2l, use_hard_l2g_mask=hard_l2g, head_dim=16,
                                           local_radius=5)).cuda().train()
    inputs = {k: v.cuda() for k, v in model_inputs().items()}
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for backend in ("reference", "flex"):
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), gradients(model)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(results["flex"][0][real], results["reference"][0][real], rtol=1e-5, atol=2e-5)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["flex"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("hard_g2l", "hard_l2g"), HARD)
def test_pattern_picture_weights_have_exactly_the_pattern_support(hard_g2l, hard_l2g):
    """The weights show-pattern draws (one global token per 16 long tokens) are > 0 exactly on the kept pairs."""
    from hf_efficient.patterns import attention_weights, pattern_model

    length, radius = 64, 4
    model = pattern_model("etc", length, local_radius=radius, use_hard_g2l_mask=hard_g2l, use_hard_l2g_mask=hard_l2g)
    weights = attention_weights(model, length)
    stream = length + 4
    positions = torch.arange(stream)
    segments = torch.cat([torch.arange(4), torch.arange(length) // 16])
    expected = pair_keep(positions[:, None], positions[None, :], segments[:, None], segments[None, :],
                         torch.ones(1, stream, dtype=torch.bool), 4, radius, hard_g2l, hard_l2g)
    assert weights.shape[-2:] == (stream, stream)
    assert torch.equal(weights > 0, expected.expand_as(weights))


def test_compiled_graphs_stay_at_the_buckets_touched_whatever_the_global_length(monkeypatch):
    """Padded batches of lengths in two buckets, each with its own number of global tokens: dynamo builds one graph
    per bucket (the global length is data of the compiled call, not a constant of it)."""
    from test_shape_buckets import ShapeOnlyCounter, counting_backend

    from hf_efficient.attention.flex import bucket_length

    torch.manual_seed(0)
    model = EfficientETCModel(config(head_dim=16, num_hidden_layers=1, attention_backend="flex",
                                     max_position_embeddings=512)).eval()
    generator = torch.Generator().manual_seed(0)
    buckets = set()
    with counting_backend(monkeypatch, ShapeOnlyCounter()) as counter:
        for length, per_global in ((30, 3), (70, 10), (200, 7), (300, 20), (260, 5), (400, 9)):
            ids = torch.randint(3, 90, (2, length), generator=generator)
            mask = torch.ones_like(ids)
            mask[1, length // 2:] = 0
            inputs = build_global_input(ids, attention_mask=mask, block_size=per_global)
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, **inputs)
            buckets.add(bucket_length(length + inputs["global_input_ids"].shape[1]))
            assert counter.frame_count == len(buckets), f"a new graph inside a bucket at length {length}"
    assert len(buckets) == 2


def test_trainer_keeps_the_global_inputs_and_trains_with_the_collator(tmp_path):
    """The heads' forward names the global inputs (Trainer drops dataset columns a forward doesn't name), and
    GlobalInputCollator builds them per padded batch: two Trainer steps move the relative tables' cross labels."""
    import inspect

    from datasets import Dataset
    from tiny_sources import write_bert_tokenizer
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_efficient.models.etc import EfficientETCForSequenceClassification, GlobalInputCollator

    for head in (EfficientETCForMaskedLM, EfficientETCForSequenceClassification):
        named = set(inspect.signature(head.forward).parameters)
        assert {"global_input_ids", "global_input_mask", "segment_ids"} <= named
    write_bert_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    torch.manual_seed(0)
    model = EfficientETCForSequenceClassification(config(num_labels=2, vocab_size=len(tokenizer)))
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, len(tokenizer), (int(n),), generator=generator).tolist()
            for n in torch.randint(10, 30, (8,), generator=generator)]
    data = Dataset.from_dict({"input_ids": rows, "labels": [i % 2 for i in range(8)]})
    collator = GlobalInputCollator(DataCollatorWithPadding(tokenizer), block_size=4)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["global_input_ids"].shape[1] == -(-int(batch["attention_mask"].sum(1).max()) // 4)
    before = model.model.layers[0].self_attn.relative_positions.key.detach().clone()
    trainer.train()
    after = model.model.layers[0].self_attn.relative_positions.key.detach()
    assert (after[2 * 2 + 1:] - before[2 * 2 + 1:]).abs().amax() > 0, "the cross labels were trained"
