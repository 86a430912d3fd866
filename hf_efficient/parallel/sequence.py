"""Sequence parallelism for the sliding-window attention (EfficientLongformer) and, in block_sparse_split.py, for
BigBird's block-sparse attention (EfficientBigBird: the whole sequence's keys and values all-gathered in every layer,
as random and global blocks reach anywhere): one long sequence split across the ranks of a torch.distributed group,
each rank holding a contiguous chunk of n = N / world tokens. Below, the sliding window's split.

In every layer, with one-sided reach h = (attention_window / 2) * attention_dilation:

* local rows: each rank sends its first h keys/values to the previous rank and its last h to the next (a halo
  exchange by P2P, whose backward sends the halo's gradients back), then runs the usual path (`sliding_window_blocked`
  on CPU, `sliding_window_flex` on GPU) over [previous halo, own chunk, next halo, global keys] and keeps its own
  rows: (2h + G) / n extra work. Halo positions past the sequence's ends are not real keys.
* global tokens: their global queries and local keys/values are gathered from the ranks that hold them (an
  all-reduce of G rows); each rank scores the global queries against its own keys, and the partial softmaxes are
  combined exactly through their log-sum-exp (a second all-reduce). The backward of each sum across ranks is the
  sum of the ranks' gradients.
* positions and masks: `shard_batch` gives each chunk its absolute position_ids (learned or rotary); the padding and
  global masks of the whole sequence (N booleans a row) are gathered once per forward.

Every rank holds the same weights and the whole batch (token ids are small); only its chunk goes to the device:

    with sequence_parallel(model, group):
        shard = {name: value.to(device) for name, value in shard_batch(batch, group).items()}
        loss = model(**shard).loss  # this rank's share: its labelled tokens' loss sum / the whole batch's count
        loss.backward()
    sum_gradients(model, group)  # on every rank, the gradients of the whole sequence's mean loss
    whole_loss(loss, group)  # that mean, for logging

Supported: EfficientLongformerModel and ...ForMaskedLM (encoders), padding, dilation, global tokens, the blocked and
flex backends, dropout; EfficientBigBirdModel and ...ForMaskedLM with right padding, extra global tokens, rows too
short for the pattern, random-block redraws in training. Refused with a ValueError saying what to change: other
variants and heads, causal models, `global_first_token`, output_attentions, cached decoding, the reference backend, a
length that is not a multiple of the world size, a chunk shorter than a layer's reach (Longformer), not a multiple of
block_size or left-padded (BigBird), or without a labelled token.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..attention.flex import bucket_keep, bucket_length, pad_length
from ..attention.global_tokens import gather_positions, global_slots, scatter_global_rows
from ..attention.sliding_window import flex_block_mask, sliding_window_blocked, sliding_window_flex
from ..core.attention import EfficientAttention, repeat_kv
from ..core.distributed import distributed
from ..core.heads import EfficientForMaskedLM
from ..core.lm_loss import IGNORE_INDEX
from ..core.modeling import EfficientModel

SPLIT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "global_attention_mask", "labels")


def group_position(group) -> tuple[int, int]:
    """(rank in the group, group size); a ValueError outside torch.distributed."""
    if not distributed():
        raise ValueError("Sequence parallelism runs in a torch.distributed group: start the processes with torchrun "
                         "and call torch.distributed.init_process_group first.")
    return dist.get_rank(group), dist.get_world_size(group)


def swap_with_neighbours(to_previous: torch.Tensor, to_next: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Send `to_previous` to rank - 1 and `to_next` to rank + 1; return (what rank - 1 sent, what rank + 1 sent),
    zeros where there is no neighbour (the sequence's ends)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    to_previous, to_next = to_previous.contiguous(), to_next.contiguous()
    from_previous = torch.zeros(to_next.shape, dtype=to_next.dtype, device=to_next.device)
    from_next = torch.zeros(to_previous.shape, dtype=to_previous.dtype, device=to_previous.device)
    operations = []
    for neighbour, sent, received in ((rank - 1, to_previous, from_previous), (rank + 1, to_next, from_next)):
        if 0 <= neighbour < world:
            peer = dist.get_global_rank(group or dist.group.WORLD, neighbour)
            operations += [dist.P2POp(dist.isend, sent, peer, group), dist.P2POp(dist.irecv, received, peer, group)]
    if operations:
        for request in dist.batch_isend_irecv(operations):
            request.wait()
    return from_previous, from_next


class HaloExchange(torch.autograd.Function):
    """key, value (batch, heads, n, d) -> the previous rank's last `reach` keys and values, the next rank's first
    `reach` ones, each (batch, heads, reach, 2d) [keys | values]; the backward sends each halo's gradient back to the
    rank it came from."""

    @staticmethod
    def forward(ctx, key: torch.Tensor, value: torch.Tensor, reach: int, group):
        ctx.reach, ctx.group, ctx.length = reach, group, key.shape[2]
        first = torch.cat([key[:, :, :reach], value[:, :, :reach]], dim=-1)
        last = torch.cat([key[:, :, -reach:], value[:, :, -reach:]], dim=-1)
        return swap_with_neighbours(first, last, group)

    @staticmethod
    def backward(ctx, grad_previous: torch.Tensor, grad_next: torch.Tensor):
        to_first, to_last = swap_with_neighbours(grad_previous, grad_next, ctx.group)
        grad = to_first.new_zeros(*to_first.shape[:2], ctx.length, to_first.shape[-1])
        grad[:, :, :ctx.reach] += to_first
        grad[:, :, -ctx.reach:] += to_last  # the two overlap when the chunk is exactly the reach long
        grad_key, grad_value = grad.chunk(2, dim=-1)
        return grad_key, grad_value, None, None


class SumAcrossRanks(torch.autograd.Function):
    """The sum of a tensor over the group's ranks, on every rank; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return SumAcrossRanks.apply(grad, ctx.group), None


def gathered_masks(keep: torch.Tensor | None, is_global: torch.Tensor | None, batch: int, length: int,
                   device: torch.device, group, world: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The whole sequence's (batch, N) padding mask and global mask (None when no token of any rank is global)."""
    ones = torch.ones(batch, length, dtype=torch.bool, device=device)
    local = torch.stack([ones if keep is None else keep, ~ones if is_global is None else is_global]).to(torch.uint8)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    keep, is_global = torch.cat(parts, dim=2).bool()  # (2, batch, N) in rank order
    return keep, (is_global if bool(is_global.any()) else None)


def split_backend(attention, hidden_states: torch.Tensor, output_attentions: bool, past_key_values) -> str:
    """The layer's path under the split mode ("blocked" or "flex"); a ValueError for what no split mode does."""
    if output_attentions:
        raise ValueError("output_attentions is not available under sequence parallelism (no rank holds a whole "
                         "row of weights); call without it.")
    if past_key_values is not None:
        raise ValueError("Cached decoding is not available under sequence parallelism; call with use_cache=False.")
    backend = attention.backend(hidden_states, False)
    if backend not in ("blocked", "flex"):
        raise ValueError(f"attention_backend={backend!r} has no split mode; use 'auto', 'blocked' or 'flex'.")
    return backend


@dataclass
class SequenceSplit:
    """The forward of a sliding-window attention layer on this rank's chunk (installed by `sequence_parallel`)."""

    group: object
    rank: int
    world: int

    def __call__(self, attention, hidden_states, attention_mask, position_embeddings, past_key_values,
                 global_attention_mask, output_attentions, shared_state):
        backend = split_backend(attention, hidden_states, output_attentions, past_key_values)
        batch, length = hidden_states.shape[:2]
        one_sided, dilation = attention.one_sided, attention.dilation
        reach = one_sided * dilation
        if length < reach:
            raise ValueError(
                f"Each rank holds {length} tokens but layer {attention.layer_idx} reaches {reach} tokens to each side "
                f"(attention_window / 2 * attention_dilation), more than one neighbour's chunk: give each rank at "
                f"least {reach} tokens (a sequence of {reach * self.world} or more), or use fewer ranks.")
        if "sequence_masks" not in shared_state:
            shared_state["sequence_masks"] = gathered_masks(attention_mask, global_attention_mask, batch, length,
                                                            hidden_states.device, self.group, self.world)
        keep, is_global = shared_state["sequence_masks"]  # (batch, N), the whole sequence
        start = self.rank * length
        query, key, value = attention.project(hidden_states, position_embeddings)
        kv_heads, dim = key.shape[1], key.shape[-1]
        # [previous halo, own chunk, next halo]: positions start - reach .. start + length + reach
        previous, following = HaloExchange.apply(key, value, reach, self.group)
        keys = torch.cat([previous[..., :dim], key, following[..., :dim]], dim=2)
        values = torch.cat([previous[..., dim:], value, following[..., dim:]], dim=2)
        queries = F.pad(query, (0, 0, reach, reach))  # the halo's rows are computed and dropped
        extended = slice(start, start + length + 2 * reach)
        keep_ext = F.pad(keep, (reach, reach))[:, extended]
        global_ext = tail_index = global_valid = None
        if is_global is not None:
            if "sequence_global_slots" not in shared_state:
                shared_state["sequence_global_slots"] = global_slots(is_global)
            global_index, global_valid = shared_state["sequence_global_slots"]  # (batch, G), positions in N
            owned = global_valid & (global_index >= start) & (global_index < start + length)
            local_index = (global_index - start).clamp(0, length - 1)
            projections = (attention.q_global_proj, attention.k_global_proj, attention.v_global_proj)
            global_qkv = attention.project(hidden_states, position_embeddings, projections)
            # each global token's global query and local key/value, from the rank that holds it
            held = torch.cat([gather_positions(x, local_index) for x in (global_qkv[0], key, value)], dim=1)
            gathered = SumAcrossRanks.apply(held * owned[:, None, :, None], self.group)
            global_query, tail_key, tail_value = gathered.split([query.shape[1], kv_heads, kv_heads], dim=1)
            # the global keys enter once, as G columns after the halo, seen by every local row
            count = global_index.shape[1]
            keys, values = torch.cat([keys, tail_key], dim=2), torch.cat([values, tail_value], dim=2)
            queries = F.pad(queries, (0, 0, 0, count))
            in_band = F.pad(is_global, (reach, reach))[:, extended]
            keep_ext = torch.cat([keep_ext & ~in_band, global_valid], dim=1)
            global_ext = torch.cat([torch.zeros_like(in_band), global_valid], dim=1)
            tail_index = (length + 2 * reach + torch.arange(count, device=keys.device)).expand(batch, count)

        if backend == "flex":
            mask_key = ("sequence_block_mask", one_sided, dilation)
            if mask_key not in shared_state:  # on the extended length's shape bucket (see attention/flex.py)
                total, device = keys.shape[2], keys.device
                bucket = bucket_length(total)
                shared_state[mask_key] = flex_block_mask(
                    bucket, one_sided, dilation, False, bucket_keep(keep_ext, batch, total, bucket, device),
                    None if global_ext is None else pad_length(global_ext, bucket, dim=1), device)
            attended = sliding_window_flex(queries, keys, values, shared_state[mask_key], attention.scaling,
                                           compiled=queries.is_cuda)  # CPU: forward only, uncompiled
        else:
            attended = sliding_window_blocked(attention, queries, keys, values, keep_ext, global_ext, tail_index,
                                              global_valid, one_sided, dilation, False)
        attended = attended[:, reach:reach + length]
        own_keep = keep[:, start:start + length]
        if is_global is not None:
            rows = self.global_rows(attention, global_query, *global_qkv[1:], own_keep, global_index - start)
            attended = scatter_global_rows(attended, rows, local_index, owned)
        return attention.merge_heads(attended * own_keep[:, :, None, None]), None

    def global_rows(self, attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
        """Global queries (batch, heads, G, d) against every real key of the sequence: each rank's softmax over its
        own keys, combined across ranks with their log-sum-exp. `positions` (batch, G): the global tokens' offsets
        in this chunk (each always sees its own key). Returns (batch, G, heads, d)."""
        key, value = repeat_kv(key, attention.num_key_value_groups), repeat_kv(value, attention.num_key_value_groups)
        offsets = torch.arange(key.shape[2], device=key.device)
        kept = keep[:, None, None, :] | (offsets == positions[:, None, :, None])  # (batch, 1, G, n)
        has_key = kept.any(-1)  # a row with no key here is scored over all (finite) and then weighted 0
        scores = (query @ key.transpose(-1, -2)).float() * attention.scaling
        scores = scores.masked_fill(~(kept | ~has_key[..., None]), float("-inf"))
        lse = scores.logsumexp(-1)  # (batch, heads, G)
        weights = F.dropout(torch.exp(scores - lse[..., None]), attention.dropout, attention.training)
        partial = (weights.to(value.dtype) @ value).float()
        lse = lse.masked_fill(~has_key, float("-inf"))
        top = lse.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.group)
        scale = torch.exp(lse - top)[..., None]  # (batch, heads, G, 1)
        total = SumAcrossRanks.apply(torch.cat([partial * scale, scale], dim=-1), self.group)
        return (total[..., :-1] / total[..., -1:]).transpose(1, 2)


def check_model(model) -> None:
    """A ValueError, saying what to change, for a model that has no split mode."""
    if not isinstance(model, EfficientModel | EfficientForMaskedLM):
        raise ValueError(f"Sequence parallelism runs the backbone and the masked-LM head; {type(model).__name__} "
                         "reads tokens that live on one rank. Use the ...Model or ...ForMaskedLM class.")
    attention_class = model.base_model.attention_class
    if not getattr(attention_class, "supports_sequence_parallel", False):
        raise ValueError(f"{attention_class.__name__} has no split mode (it would attend within each rank's chunk "
                         "only); sequence parallelism supports the sliding-window attention of efficient_longformer "
                         "and the block-sparse attention of efficient_bigbird.")
    if model.config.is_causal:
        raise ValueError("Sequence parallelism supports encoders (is_causal=False); a causal model's next-token "
                         "labels cross the chunk boundaries. Train causal models on one device.")
    if getattr(model.config, "global_first_token", False):
        raise ValueError("global_first_token would make the first token of every rank's chunk global: set it to "
                         "False and mark position 0 in the global_attention_mask passed to shard_batch instead.")


@contextlib.contextmanager
def sequence_parallel(model, group=None):
    """Within the block, `model`'s attention layers run on chunks of one sequence split across `group` (default: the
    whole world), exchanging only the window's halo and the global tokens (Longformer) or all-gathering the keys and
    values (BigBird, see block_sparse_split.py). Feed it `shard_batch`'s chunks."""
    from ..models.bigbird.modeling_bigbird import EfficientBigBirdAttention
    from .block_sparse_split import BlockSparseSplit  # it builds on this module's pieces

    check_model(model)
    block_sparse = issubclass(model.base_model.attention_class, EfficientBigBirdAttention)
    split = (BlockSparseSplit if block_sparse else SequenceSplit)(group, *group_position(group))
    layers = [module for module in model.modules() if isinstance(module, EfficientAttention)]
    for layer in layers:
        layer.sequence_split = split
    try:
        yield model
    finally:
        for layer in layers:
            del layer.sequence_split  # back to the class's None


def shard_batch(batch: dict, group=None) -> dict:
    """This rank's chunk of a batch of whole sequences: each (batch, N) input cut into contiguous chunks of N / world
    tokens, `position_ids` the chunk's absolute positions (unless given), and with `labels` `num_items_in_batch`, the
    whole batch's labelled-token count, so that the model's loss is this rank's share of the whole mean."""
    rank, world = group_position(group)
    unknown = sorted(set(batch) - set(SPLIT_INPUTS))
    if unknown:
        raise ValueError(f"shard_batch cuts {', '.join(SPLIT_INPUTS)}; drop {unknown} (inputs_embeds: pass "
                         "input_ids).")
    if "input_ids" not in batch:
        raise ValueError("shard_batch needs input_ids (batch, sequence).")
    rows, length = batch["input_ids"].shape
    for name, value in batch.items():
        if tuple(value.shape) != (rows, length):
            raise ValueError(f"{name} has shape {tuple(value.shape)}; shard_batch cuts per-token inputs of the "
                             f"input_ids' shape {(rows, length)} (sequence-level labels are not supported).")
    if length % world:
        raise ValueError(f"The sequence has {length} tokens, not a multiple of the {world} ranks: pad it to one "
                         f"(e.g. the tokenizer's pad_to_multiple_of={world}, with its attention_mask).")
    size = length // world
    start = rank * size
    shard = {name: value[:, start:start + size].contiguous() for name, value in batch.items()}
    if "position_ids" not in shard:
        shard["position_ids"] = torch.arange(start, start + size, device=batch["input_ids"].device).expand(rows, -1)
    if "labels" in batch:
        labelled = (batch["labels"] != IGNORE_INDEX).view(rows, world, size).sum((0, 2))  # per chunk
        if not bool((labelled > 0).all()):
            empty = (labelled == 0).nonzero().flatten().tolist()
            raise ValueError(f"The chunks of ranks {empty} hold no labelled token, so their loss would not reach "
                             "their layers, whose backward exchanges gradients with the neighbours: label (mask) "
                             "tokens in every chunk, or use fewer ranks.")
        shard["num_items_in_batch"] = labelled.sum()
    return shard


def sum_gradients(model, group=None) -> None:
    """Sum the parameters' gradients across the group: each rank's loss is its share of the whole sequence's, so
    the sum is the whole loss's gradient, the same on every rank (then step each rank's optimizer)."""
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, group=group)


def whole_loss(share: torch.Tensor, group=None) -> torch.Tensor:
    """The whole sequence's loss from each rank's share (detached, for logging)."""
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return total
