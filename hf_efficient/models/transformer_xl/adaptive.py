"""Adaptive input embeddings (Baevski & Auli, arXiv 1809.10853) and the adaptive softmax (Grave et al., arXiv
1609.04309) as Transformer-XL uses them on WikiText-103: the vocabulary split at `adaptive_cutoffs` into clusters,
cluster i embedded in embedding_size // adaptive_div_val**i dimensions and projected to hidden_size.

Softmax: a head over the first cluster's tokens plus one logit per tail cluster; a tail token's log-probability is
log p(cluster | h) + log p(token | cluster, h). The output weights are the input tables (read through the input
module, not a second copy) when tie_word_embeddings, and each cluster's output projection is the input's where
`adaptive_tie_projections` says so (default: every cluster but the first, the paper's setting). Deviation: the head
returns the full (..., vocab) log-probabilities, so training computes every cluster for every token (the paper's
code computes only the target's cluster); the causal-LM loss of log-probabilities is their negative log-likelihood.
"""

import torch
from torch import nn

from .configuration_transformer_xl import EfficientTransformerXLConfig


def cluster_bounds(config: EfficientTransformerXLConfig) -> list[tuple[int, int]]:
    ends = [0, *config.adaptive_cutoffs, config.vocab_size]
    return list(zip(ends[:-1], ends[1:], strict=True))


def cluster_dims(config: EfficientTransformerXLConfig) -> list[int]:
    return [config.embedding_size // config.adaptive_div_val**i for i in range(len(config.adaptive_cutoffs) + 1)]


def has_projections(config: EfficientTransformerXLConfig) -> bool:
    """Projections to hidden_size exist for every cluster when the sizes differ or adaptive_div_val > 1 (the
    paper's code then projects even a full-size first cluster)."""
    return config.adaptive_div_val > 1 or config.embedding_size != config.hidden_size


def tied_projections(config: EfficientTransformerXLConfig) -> list[bool]:
    count = len(config.adaptive_cutoffs) + 1
    tied = config.adaptive_tie_projections
    return [False] + [True] * (count - 1) if tied is None else list(tied)


class AdaptiveInput(nn.Module):
    """ids -> (..., hidden_size): cluster i's table `tables.i` (size_i, dim_i), then `projections.i` (a bias-free
    linear map dim_i -> hidden)."""

    def __init__(self, config: EfficientTransformerXLConfig):
        super().__init__()
        self.bounds = cluster_bounds(config)
        dims = cluster_dims(config)
        self.tables = nn.ModuleList(nn.Embedding(end - start, dim) for (start, end), dim in zip(self.bounds, dims,
                                                                                               strict=True))
        self.projections = nn.ModuleList(
            nn.Linear(dim, config.hidden_size, bias=False) for dim in dims) if has_projections(config) else None
        self.hidden_size = config.hidden_size

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        reference = self.tables[0].weight
        out = torch.zeros(*input_ids.shape, self.hidden_size, dtype=reference.dtype, device=reference.device)
        for index, (start, end) in enumerate(self.bounds):
            inside = (input_ids >= start) & (input_ids < end)
            embedded = self.tables[index](input_ids[inside] - start)  # (tokens of the cluster, dim_i)
            if self.projections is not None:
                embedded = self.projections[index](embedded)
            out = out.index_put((inside,), embedded)
        return out


class AdaptiveSoftmax(nn.Module):
    """hidden (..., hidden_size) -> log-probabilities (..., vocab_size) over the clusters (see the module docstring).
    Own parameters: `cluster_weight` (clusters - 1, dim_0), `cluster_bias`, `bias` (vocab), and the output tables
    (`weights.i`) and projections (`projections.i`) that are not tied to the input's."""

    def __init__(self, config: EfficientTransformerXLConfig, tied_input: AdaptiveInput | None):
        super().__init__()
        self.bounds = cluster_bounds(config)
        dims = cluster_dims(config)
        tails = len(self.bounds) - 1
        self._input = (tied_input,)  # a reference, not a submodule: the tables are saved once, under the input
        self.cluster_weight = nn.Parameter(torch.zeros(tails, dims[0]))
        self.cluster_bias = nn.Parameter(torch.zeros(tails))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.weights = None if tied_input is not None else nn.ParameterList(
            nn.Parameter(torch.zeros(end - start, dim)) for (start, end), dim in zip(self.bounds, dims, strict=True))
        tied = tied_projections(config) if tied_input is not None else [False] * len(dims)
        self.tied = tied if has_projections(config) else [False] * len(dims)
        self.projections = nn.ModuleDict(
            {str(i): nn.Linear(dim, config.hidden_size, bias=False) for i, dim in enumerate(dims)
             if has_projections(config) and not self.tied[i]})

    def weight(self, index: int) -> torch.Tensor:
        return self._input[0].tables[index].weight if self.weights is None else self.weights[index]

    def projection(self, index: int) -> torch.Tensor | None:
        """(hidden, dim_i): the hidden state enters cluster i's space as h @ P_i (the input maps back with P_i)."""
        if self.tied[index]:
            return self._input[0].projections[index].weight
        return self.projections[str(index)].weight if str(index) in self.projections else None

    def cluster_logits(self, hidden: torch.Tensor, index: int, weight: torch.Tensor, bias: torch.Tensor):
        projection = self.projection(index)
        if projection is not None:
            hidden = torch.matmul(hidden, projection)  # (..., hidden) -> (..., dim_i)
        return nn.functional.linear(hidden, weight, bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shortlist = self.bounds[0][1]
        head = self.cluster_logits(hidden, 0, torch.cat([self.weight(0), self.cluster_weight]),
                                   torch.cat([self.bias[:shortlist], self.cluster_bias]))
        head = head.float().log_softmax(-1)  # (..., shortlist + clusters - 1)
        out = [head[..., :shortlist]]
        for index, (start, end) in enumerate(self.bounds[1:], start=1):
            tail = self.cluster_logits(hidden, index, self.weight(index), self.bias[start:end]).float().log_softmax(-1)
            out.append(head[..., shortlist + index - 1, None] + tail)  # log p(cluster) + log p(token | cluster)
        return torch.cat(out, dim=-1).to(hidden.dtype)
