"""Sequence parallelism (hf_efficient.parallel) on 2 and 3 CPU processes of a gloo group: a masked-LM step on a
sequence split across the ranks gives the whole sequence's logits, loss and (summed) gradients, as one process
computes them, with padding, dilation, global tokens on some ranks only and windows reaching across the chunks'
boundaries (Longformer), or random blocks and global blocks reaching across them (BigBird); and the refusals."""

import pytest
import torch
from block_mask_emulation import kernel_keep
from ranks import run_ranks

from hf_efficient import (
    EfficientBigBirdConfig,
    EfficientBigBirdForMaskedLM,
    EfficientLinformerConfig,
    EfficientLinformerForMaskedLM,
    EfficientLongformerConfig,
    EfficientLongformerForMaskedLM,
    EfficientLongformerForSequenceClassification,
    EfficientLongformerModel,
)
from hf_efficient.attention.block_sparse import block_layout, block_table, flex_block_mask, random_table, token_keep
from hf_efficient.attention.flex import bucket_keep, bucket_length, pad_length
from hf_efficient.parallel import sequence_parallel, shard_batch, sum_gradients, whole_loss

LENGTH = 48
# reach (window / 2 * dilation): 4 tokens in layer 0, 6 in layer 1, across every boundary of 24- or 16-token chunks
SIZES = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             attention_window=[8, 6], attention_dilation=[1, 2])
BACKBONE = {name: value for name, value in SIZES.items() if name not in ("attention_window", "attention_dilation")}
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def masked_lm(**overrides) -> EfficientLongformerForMaskedLM:
    torch.manual_seed(0)  # the same weights in every process
    return EfficientLongformerForMaskedLM(EfficientLongformerConfig(**SIZES, **overrides))


def whole_batch(global_positions: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Two random rows of LENGTH tokens, the second padded over its last 13, labels on a random 30% of the real
    tokens (at least one per 16-token chunk), the given (row, position) tokens global."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 61, (2, LENGTH), generator=generator)
    keep = torch.ones_like(ids)
    keep[1, -13:] = 0
    labelled = (torch.rand(2, LENGTH, generator=generator) < 0.3) & keep.bool()
    labelled[0, ::16] = True
    is_global = torch.zeros_like(ids)
    for row, position in global_positions:
        is_global[row, position] = 1
    return {"input_ids": ids, "attention_mask": keep, "labels": torch.where(labelled, ids, -100),
            "global_attention_mask": is_global}


def train_step_matches_one_process(model, batch: dict, own: slice, group):
    """One process's train step on the whole batch, then the split one: this rank's logits (positions `own`), the
    whole loss and the rank-summed gradients (every used parameter's non-zero) equal one process's. Returns the whole
    pass's output."""
    whole = model(**batch, return_logits=True)
    whole.loss.backward()
    expected = {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                if parameter.grad is not None}  # all but an unused pooler's
    model.zero_grad()
    with sequence_parallel(model, group):
        split = model(**shard_batch(batch, group), return_logits=True)
        split.loss.backward()
    sum_gradients(model, group)
    torch.testing.assert_close(split.logits, whole.logits[:, own], **TOLERANCE)
    torch.testing.assert_close(whole_loss(split.loss, group), whole.loss, **TOLERANCE)
    grads = {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, expected[name], **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")
    return whole


def split_matches_one_process(rank: int, world: int, overrides: dict, global_positions: list, group=None) -> None:
    model = masked_lm(**overrides).train()
    batch = whole_batch(global_positions)
    size = LENGTH // world
    own = slice(rank * size, (rank + 1) * size)
    train_step_matches_one_process(model, batch, own, group)

    model.eval()
    no_global = {name: value for name, value in batch.items() if name != "global_attention_mask"}
    for backend, inputs in (("blocked", no_global), ("flex", batch)):  # flex: forward only on CPU
        with torch.no_grad():
            expected_logits = model(**inputs, return_logits=True).logits[:, own]
            model.config.attention_backend = backend
            with sequence_parallel(model, group):
                logits = model(**shard_batch(inputs, group), return_logits=True).logits
            model.config.attention_backend = "auto"
        torch.testing.assert_close(logits, expected_logits, **TOLERANCE, msg=lambda m, b=backend: f"{b}: {m}")


def refusals_in_a_group(group) -> None:
    model = masked_lm().eval()
    batch = whole_batch([(0, 3)])
    with pytest.raises(ValueError, match="not a multiple of the 2 ranks"):
        shard_batch({name: value[:, :-1] for name, value in batch.items()}, group)
    without_labels = dict(batch, labels=torch.where(torch.arange(LENGTH) < LENGTH // 2, batch["labels"], -100))
    with pytest.raises(ValueError, match=r"ranks \[1\] hold no labelled token"):
        shard_batch(without_labels, group)
    with pytest.raises(ValueError, match="sequence-level labels"):
        shard_batch(dict(batch, labels=torch.tensor([0, 1])), group)
    with pytest.raises(ValueError, match="drop .'inputs_embeds'"):
        shard_batch(dict(batch, inputs_embeds=torch.zeros(2, LENGTH, 32)), group)
    with sequence_parallel(model, group), torch.no_grad():
        with pytest.raises(ValueError, match="output_attentions"):
            model(**shard_batch(batch, group), output_attentions=True)
        short = {name: value[:, :8] for name, value in batch.items() if name != "labels"}  # layer 1 reaches 6
        with pytest.raises(ValueError, match="at least 6 tokens"):
            model(**shard_batch(short, group))
        model.config.attention_backend = "reference"
        with pytest.raises(ValueError, match="'reference' has no split mode"):
            model(**shard_batch(batch, group))
        model.config.attention_backend = "auto"
    assert model.model.layers[0].self_attn.sequence_split is None, "leaving the block restores the layers"


# blocks of 4 tokens: a row of 16 blocks (64 tokens) is 8 per rank; rows of fewer than 8 blocks get full attention
BIGBIRD = dict(BACKBONE, num_attention_heads=4, num_key_value_heads=2, block_size=4, num_sliding_blocks=3,
               num_random_blocks=1, num_global_blocks=2, position_embedding_type="rotary")


def bigbird_batch() -> dict[str, torch.Tensor]:
    """Three rows of 64 tokens: unpadded (its last block on rank 1), padded over the last 13 (13 blocks, the last
    one partial, on rank 1), and 24 real tokens (too short for the pattern: full attention, all on rank 0); labels on
    a random 30% of the real tokens, extra global tokens in both chunks."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 61, (3, 64), generator=generator)
    keep = torch.ones_like(ids)
    keep[1, -13:] = 0
    keep[2, 24:] = 0
    labelled = (torch.rand(3, 64, generator=generator) < 0.3) & keep.bool()
    labelled[0, ::16] = True
    is_global = torch.zeros_like(ids)
    for row, position in ((0, 10), (0, 40), (1, 37), (2, 5)):
        is_global[row, position] = 1
    return {"input_ids": ids, "attention_mask": keep, "labels": torch.where(labelled, ids, -100),
            "global_attention_mask": is_global}


def bigbird_split_matches_one_process(rank: int, group) -> None:
    """Train step (blocked path), a training forward with a fresh random draw per forward (rank 0's seed on both
    ranks), and eval forwards on the flex path (forward only on CPU)."""
    torch.manual_seed(0)
    model = EfficientBigBirdForMaskedLM(EfficientBigBirdConfig(**BIGBIRD)).train()
    random = model.model.layers[0].self_attn.random_blocks(16)[:, 1:15]  # (kv_heads, sparse query blocks 1..14, r)
    rank_of_query = (torch.arange(1, 15) >= 8)[None, :, None]
    assert ((random >= 8) != rank_of_query).any(), "some random key blocks lie on the other rank"
    batch = bigbird_batch()
    own = slice(rank * 32, (rank + 1) * 32)
    whole = train_step_matches_one_process(model, batch, own, group)
    model.zero_grad()

    with torch.no_grad():  # a redraw per training forward: rank 0's seed on both ranks, whatever rank 1's generator
        torch.manual_seed(5)
        draw = int(torch.randint(0, 2**62, (1,)))
        model.config.seed = draw  # the pattern of that draw, with the model's seed
        redrawn = model(**batch, return_logits=True).logits[:, own]
        assert not torch.allclose(redrawn, whole.logits[:, own]), "the draw changes the pattern"
        model.config.seed, model.config.resample_random_blocks_in_training = 0, True
        torch.manual_seed(5 + rank)
        with sequence_parallel(model, group):
            logits = model(**shard_batch(batch, group), return_logits=True).logits
        torch.testing.assert_close(logits, redrawn, **TOLERANCE)
        model.config.resample_random_blocks_in_training = False

    model.eval()
    unpadded = {name: value[:1] for name, value in batch.items() if name in ("input_ids", "labels")}
    for inputs in (batch, unpadded):  # flex: padding and extra global tokens, then the cached mask of a plain row
        with torch.no_grad():
            expected_logits = model(**inputs, return_logits=True).logits[:, own]
            model.config.attention_backend = "flex"
            with sequence_parallel(model, group):
                logits = model(**shard_batch(inputs, group), return_logits=True).logits
            model.config.attention_backend = "auto"
        torch.testing.assert_close(logits, expected_logits, **TOLERANCE, msg=lambda m: f"flex: {m}")


@pytest.mark.parametrize("tile", [16, 64])  # whole tiles in each rank's rows; tiles cut by a rank's start
def test_bigbird_split_block_masks_are_the_whole_pattern_rows(tile):
    """The GPU kernels read a BlockMask's tile tables, which FlexAttention on CPU ignores: expanded as the kernels read
    them (block_mask_emulation), each rank's mask (Q_LEN = its 32 tokens, KV_LEN = the whole bucket) keeps, on its
    real rows, exactly the pairs of the whole sequence's pattern (padding, extra global tokens and a short row)."""
    torch.manual_seed(0)
    attention = EfficientBigBirdForMaskedLM(EfficientBigBirdConfig(**BIGBIRD)).model.layers[1].self_attn
    config, batch = attention.config, bigbird_batch()
    bucket = bucket_length(64)
    keep = bucket_keep(batch["attention_mask"].bool(), 3, 64, bucket, torch.device("cpu"))
    layout = block_layout(keep, pad_length(batch["global_attention_mask"].bool(), bucket, dim=1), 3, bucket,
                          config.block_size, config.num_global_blocks, config.min_sparse_blocks, torch.device("cpu"))
    random = random_table(layout, 2, 1, attention.random_blocks)
    pattern = token_keep(layout, block_table(layout, random, 3)).repeat_interleave(2, dim=1)  # (3, 4, bucket, bucket)
    for start in (0, 32):
        table = block_table(layout, random, 3, slice(start // 4, (start + 32) // 4))
        kept = kernel_keep(flex_block_mask(layout, table, 4, torch.device("cpu"), tile, start), heads=4)
        real = keep[:, start:start + 32]
        assert kept.shape == (3, 4, 32, bucket)
        torch.testing.assert_close(kept.transpose(1, 2)[real], pattern[:, :, start:start + 32].transpose(1, 2)[real])


def bigbird_refusals(group) -> None:
    model = EfficientBigBirdForMaskedLM(EfficientBigBirdConfig(**BIGBIRD)).eval()
    batch = {name: value for name, value in bigbird_batch().items() if name != "labels"}
    with sequence_parallel(model, group), torch.no_grad():
        with pytest.raises(ValueError, match="not a multiple of block_size=4"):
            model(**shard_batch({name: value[:, :60] for name, value in batch.items()}, group))
        with pytest.raises(ValueError, match="left padding"):
            model(**shard_batch(dict(batch, attention_mask=batch["attention_mask"].flip(1)), group))
        with pytest.raises(ValueError, match="output_attentions"):
            model(**shard_batch(batch, group), output_attentions=True)
        model.config.attention_backend = "reference"
        with pytest.raises(ValueError, match="'reference' has no split mode"):
            model(**shard_batch(batch, group))


def two_and_three_ranks(rank: int, world: int) -> None:
    """Ranks 0 and 1 as a group of their own (absolute positions, global tokens in both chunks, the second row
    padded from the middle of rank 1's chunk; then the refusals), then all three (rotary positions, global tokens in
    rank 0's chunk only, the middle rank taking halos from both sides). One set of processes, as starting them costs
    seconds."""
    pair = torch.distributed.new_group([0, 1])
    if rank < 2:
        split_matches_one_process(rank, 2, {}, [(0, 3), (0, 30), (1, 5)], pair)
        refusals_in_a_group(pair)
        bigbird_split_matches_one_process(rank, pair)
        bigbird_refusals(pair)
    split_matches_one_process(rank, world, {"position_embedding_type": "rotary"}, [(0, 2), (1, 10)])


def test_split_matches_one_process_on_two_and_three_ranks():
    run_ranks(two_and_three_ranks, world=3)


@pytest.mark.parametrize(("model", "message"), [
    (lambda: EfficientLinformerForMaskedLM(EfficientLinformerConfig(**BACKBONE, projected_length=16)),
     "has no split mode"),
    (lambda: EfficientLongformerModel(EfficientLongformerConfig(**SIZES, is_causal=True)), "encoders"),
    (lambda: EfficientLongformerForSequenceClassification(EfficientLongformerConfig(**SIZES)), "masked-LM head"),
    (lambda: masked_lm(global_first_token=True), "mark position 0"),
    (lambda: masked_lm(), "torch.distributed group"),
])
def test_refusals(model, message):
    with pytest.raises(ValueError, match=message), sequence_parallel(model()):
        pass


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("model", ["longformer", "bigbird"])
def test_split_matches_one_gpu_on_two_gpus(tmp_path, model):
    """benchmarks/sequence_parallel.py's fp32 check (flex on CUDA, NCCL) on a tiny model, and its table."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(root / "benchmarks" / "sequence_parallel.py"), "--model", model, "--tiny", "--lengths", "1024",
               "2048", "--check-length", "1024", "--repeats", "1", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                         "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = re.search(r"max abs diff (\S+); gradients max abs diff (\S+) \(largest gradient (\S+)\)", run.stdout)
    loss_diff, grad_diff, largest = (float(x) for x in found.groups())
    assert loss_diff <= 1e-4 and grad_diff <= 1e-3 * largest, found.group(0)
    assert "| 2048 | 2 |" in run.stdout
