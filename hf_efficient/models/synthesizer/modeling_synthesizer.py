"""EfficientSynthesizer: the backbone with synthetic attention (dense / random / factorized, and their mixtures with
dot-product attention) in every layer. Bidirectional and causal; a fixed maximum length."""

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

from ...attention.synthetic import (
    DOT_PRODUCT,
    DenseSynthesizer,
    FactorizedDenseSynthesizer,
    FactorizedRandomSynthesizer,
    RandomSynthesizer,
    synthetic_attention,
    synthetic_reference,
    table_positions,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.distributed import shared_seed
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import key_keep, left_padding_starts
from ...core.modeling import EfficientModel
from .configuration_synthesizer import EfficientSynthesizerConfig

logger = logging.get_logger(__name__)

LAYER_SEED_STRIDE = 100003
COMPONENT_SEED = {"random": 1, "factorized_random": 2}
RANDOM_COMPONENTS = tuple(COMPONENT_SEED)
# conversion draws these N(0, initializer_range^2) (the first layers W1, W_A); the layers that produce logits start at 0
DRAWN_AT_CONVERSION = {("dense", "hidden.weight"), ("factorized_dense", "hidden.weight"),
                       ("factorized_dense", "weight_a")}


def random_generator(config: EfficientSynthesizerConfig, layer_idx: int, component: str) -> torch.Generator:
    """The generator of one layer's random table: a pure function of (seed, layer, component)."""
    seed = (config.seed * LAYER_SEED_STRIDE + layer_idx) * 4 + COMPONENT_SEED[component]
    return torch.Generator(device="cpu").manual_seed(seed)


def draw_random_tables(config: EfficientSynthesizerConfig, layer_idx: int, component: str) -> tuple[torch.Tensor, ...]:
    """R (random) or (R1, R2) (factorized_random) of one layer, from the config's seed."""
    generator = random_generator(config, layer_idx, component)
    heads, n, std = config.num_attention_heads, config.max_position_embeddings, config.random_init_std
    if component == "random":
        return (RandomSynthesizer.draw(heads, n, std, generator),)
    return FactorizedRandomSynthesizer.draw(heads, n, config.factorized_random_rank, std, generator)


def build_synthesizers(config: EfficientSynthesizerConfig, layer_idx: int) -> nn.ModuleDict:
    """One module per synthetic component of `config.synthesizer_type` (the dot product needs none)."""
    heads, n, width = config.num_attention_heads, config.max_position_embeddings, config.synthesizer_width
    modules = {}
    for component in config.synthesizer_components:
        if component == "dense":
            modules[component] = DenseSynthesizer(config.hidden_size, heads, width, n)
        elif component == "factorized_dense":
            modules[component] = FactorizedDenseSynthesizer(config.hidden_size, heads, width,
                                                            *config.factorized_dense_sizes)
        elif component == "random":
            modules[component] = RandomSynthesizer(config.random_trainable,
                                                   *draw_random_tables(config, layer_idx, component),
                                                   layer_idx=layer_idx)
        elif component == "factorized_random":
            modules[component] = FactorizedRandomSynthesizer(config.random_trainable,
                                                             *draw_random_tables(config, layer_idx, component),
                                                             layer_idx=layer_idx)
    return nn.ModuleDict(modules)


class UnusedProjection(nn.Module):
    """q_proj / k_proj of a synthesizer without the dot product: the weight and bias as persistent buffers (same
    state-dict keys as the nn.Linear), so a checkpoint loads, converts and switches to `dot_product_only` (where they
    are the parameters of a Linear again), while nothing trains or uses them here."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach(), persistent=True)
        if linear.bias is not None:
            self.register_buffer("bias", linear.bias.detach(), persistent=True)


class EfficientSynthesizerAttention(EfficientAttention):
    """Synthesizer attention: Tay et al., "Synthesizer: Rethinking Self-Attention in Transformer Models"
    (arXiv 2005.00743).

    out = softmax(sum_c alpha_c S_c + mask) x W_v, S_c the dense (W2 relu(W1 x_i + b1) + b2), random (R),
    factorized dense (tiled A * repeated B), factorized random (R1 R2^T) logits over the first N of n positions, or
    the dot product Q K^T / sqrt(d) (see attention/synthetic.py). Time O(h N^2 d), memory O(h N^2): quadratic by
    nature (the method removes token-token dot products, not the N x N matrix). Paths: "reference" (the paper's
    formulas, weights for `output_attentions`), "blocked" (the needed columns only, input-independent logits shared by
    the batch, mixtures with the dot product through sdpa/eager with the synthetic logits as an additive mask; also
    the GPU path). Causal by masking the upper triangle; padded keys masked; padding query rows of the output zero.
    Deviations from the paper: the factorized dense F_A and F_B share their first layer W1; the mixture's alphas are
    free (1.0 each by default, as the authors' code sums the logits; the paper's sum-to-one is not enforced).
    Cached decoding: a DynamicCache keeps the values (and keys with the dot product); a new token at position p
    takes row p of R / R1 R2^T, or its own B_p, over the first p + 1 columns: O(h p d) per token. Positions count
    from each row's first real token, so left-padded batches (full passes and decoding) are exact.
    """

    supports_cache = True
    max_length_fixed = True

    def __init__(self, config: EfficientSynthesizerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.max_length = config.max_position_embeddings
        self.components = config.synthesizer_components
        self.synthesizers = build_synthesizers(config, layer_idx)
        alphas = config.resolved_mixture_weights
        if alphas is not None:
            initial = torch.tensor(alphas, dtype=torch.float32)
            if config.mixture_trainable:
                self.mixture_weights = nn.Parameter(initial)
            else:
                self.register_buffer("mixture_weights", initial, persistent=True)
        else:
            self.mixture_weights = None
        self.uses_dot_product = DOT_PRODUCT in self.components or config.dot_product_only
        if not self.uses_dot_product:  # kept, so that one checkpoint serves every setting, but not trained
            self.q_proj, self.k_proj = UnusedProjection(self.q_proj), UnusedProjection(self.k_proj)

    @classmethod
    def lora_targets(cls, config: EfficientSynthesizerConfig) -> tuple[str, ...]:
        """v_proj and o_proj; q_proj and k_proj only where the dot product is used (else they are frozen buffers)."""
        if DOT_PRODUCT in config.synthesizer_components or config.dot_product_only:
            return super().lora_targets(config)
        return ("v_proj", "o_proj")

    @classmethod
    def lora_trained_in_full(cls, config: EfficientSynthesizerConfig) -> tuple[str, ...]:
        """The synthetic components with parameters (dense and factorized dense always, random ones when trainable);
        their tables are (heads, n, ...) weights, not projections. The mixture's alphas, a parameter of the attention
        module itself, stay frozen under LoRA."""
        if config.dot_product_only:
            return ()
        trained = [c for c in config.synthesizer_components
                   if c != DOT_PRODUCT and (c not in RANDOM_COMPONENTS or config.random_trainable)]
        return tuple(f"synthesizers.{component}" for component in trained)

    def alpha(self, component: str) -> torch.Tensor | float:
        if self.mixture_weights is None:
            return 1.0
        return self.mixture_weights[self.components.index(component)]

    def mixed_logits(self, hidden_states: torch.Tensor, past: int, total: int, starts: torch.Tensor | None,
                     reference: bool) -> torch.Tensor:
        """sum_c alpha_c S_c over the synthetic components for the new tokens at positions past.. over the `total`
        keys, table positions counted from each row's first real token (`starts`, None: from 0): (1 or batch, heads,
        L, total)."""
        rows, columns = table_positions(past, total, starts), table_positions(0, total, starts)
        result = None
        for component, synthesizer in self.synthesizers.items():
            logits = (synthesizer.reference_logits if reference else synthesizer.logits)(hidden_states, rows, columns)
            term = self.alpha(component) * logits
            result = term if result is None else result + term
        return result

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length = hidden_states.shape[:2]
        past = past_key_values.get_seq_length(self.layer_idx) if past_key_values is not None else 0
        total = past + length
        if total > self.max_length:
            cached = f" ({past} cached + {length} new)" if past else ""
            raise ValueError(
                f"This Synthesizer has a fixed maximum length: its synthetic tables have max_position_embeddings="
                f"{self.max_length} positions, but the input has {total} tokens{cached}. Truncate the input to "
                f"{self.max_length} tokens, or convert/train a model with a larger max_position_embeddings."
            )
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        if backend not in ("reference", "blocked"):
            raise ValueError(f"attention_backend={backend!r}: the Synthesizer's paths are 'reference' and 'blocked' "
                             "(also the GPU path); use attention_backend='auto', 'blocked' or 'reference'.")
        if self.uses_dot_product:
            query, key, value = self.project(hidden_states, position_embeddings)
        else:
            query = key = None
            value = self.split_heads(self.v_proj(hidden_states))
        if past_key_values is not None:
            # without the dot product only values are needed; a one-number key per token lets the cache count them
            new_key = key if key is not None else value.new_zeros(batch, 1, length, 1)
            cached_key, value = past_key_values.update(new_key, value, self.layer_idx)
            key = cached_key if key is not None else None
        dot_product_only = self.config.dot_product_only
        starts = left_padding_starts(attention_mask, shared_state)  # tables count from each row's first real token
        weights = None
        if backend == "reference":
            scores = 0.0
            if query is not None:
                scores = torch.einsum("bhqd,bhkd->bhqk", query, repeat_kv(key, self.num_key_value_groups))
                scores = scores * self.scaling * (1.0 if dot_product_only else self.alpha(DOT_PRODUCT))
            if not dot_product_only:
                scores = scores + self.mixed_logits(hidden_states, past, total, starts, reference=True)
            attended, weights = synthetic_reference(scores, repeat_kv(value, self.num_key_value_groups),
                                                    attention_mask, self.is_causal, self.dropout)
        elif dot_product_only:
            attended, _ = self.attend(query, key, value, key_keep(attention_mask, length, total),
                                      is_causal=self.is_causal)
        else:
            if query is not None:  # a mixture with the dot product: alpha_vanilla Q K^T = (alpha_vanilla Q) K^T
                query = query * self.alpha(DOT_PRODUCT).to(query.dtype)
            logits = self.mixed_logits(hidden_states, past, total, starts, reference=False)
            attended = synthetic_attention(self, logits, query, key, value, attention_mask, self.is_causal)
        if attention_mask is not None:
            attended = attended * attention_mask[:, -length:, None, None].to(attended.dtype)
        return self.merge_heads(attended), (weights if output_attentions else None)


def synthesizer_parameters_for_conversion(weights: dict[str, torch.Tensor],
                                          config: EfficientSynthesizerConfig) -> list[str]:
    """Conversion: every synthetic table starts at zero logits (dense and factorized dense: W2, b2 / W_B, b_B = 0, W1
    and W_A drawn N(0, initializer_range^2); random: R = 0; factorized random: R2 = 0, R1 drawn), and the mixture's
    alphas are the config's (1.0 each by default). A mixture with "vanilla" (alpha_vanilla = 1) therefore starts as
    its source exactly (softmax(Q K^T / sqrt(d) + 0)), and its synthetic parts get gradients from the first step; a
    pure synthesizer starts as uniform attention over the visible tokens (the mean of their values), the closest start
    without token-token products. Fixed random tables (random_trainable=False) are buffers kept as drawn from `seed`
    (zero would fix them at zero). q_proj and k_proj are the source's (kept as unused buffers without "vanilla")."""
    components = config.synthesizer_components
    alphas = config.resolved_mixture_weights
    if DOT_PRODUCT in components and alphas is not None and alphas[components.index(DOT_PRODUCT)] != 1.0:
        logger.warning(f"mixture_weights={alphas}: alpha_vanilla != 1 scales the source's attention logits, so the "
                       "converted model does not start at its source; use 1.0 for an exact start.")
    if DOT_PRODUCT in components and not config.random_trainable and set(RANDOM_COMPONENTS) & set(components):
        logger.warning("Fixed random tables (random_trainable=False) are kept as drawn: the converted mixture does not"
                       " start at its source.")
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    added = []
    for layer in range(config.num_hidden_layers):
        start = {f"synthesizers.{name}": t for name, t in build_synthesizers(config, layer).state_dict().items()}
        if alphas is not None:
            start["mixture_weights"] = torch.tensor(alphas, dtype=torch.float32)
        for name, tensor in start.items():
            target = f"model.layers.{layer}.self_attn.{name}"
            if target in weights:
                continue
            component, _, leaf = name.removeprefix("synthesizers.").partition(".")
            fixed_table = component in RANDOM_COMPONENTS and not config.random_trainable
            if name == "mixture_weights" or fixed_table or (component, leaf) == ("factorized_random", "left"):
                weights[target] = tensor  # the config's alphas, or the table drawn from `seed`
            elif (component, leaf) in DRAWN_AT_CONVERSION:
                weights[target] = torch.randn(tensor.shape, generator=generator) * config.initializer_range
            else:
                weights[target] = torch.zeros_like(tensor)  # W2, b2 / W_B, b_B / R / R2 and the first-layer biases
            added.append(target)
    return added


class EfficientSynthesizerModel(EfficientModel):
    config_class = EfficientSynthesizerConfig
    attention_class = EfficientSynthesizerAttention
    seeded_tensors = ("synthesizers.random.weight", "synthesizers.factorized_random.left",
                      "synthesizers.factorized_random.right")

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DenseSynthesizer):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, FactorizedDenseSynthesizer):
            init.normal_(module.weight_a, mean=0.0, std=std)
            init.normal_(module.weight_b, mean=0.0, std=std)
            init.zeros_(module.bias_a)
            init.zeros_(module.bias_b)
        elif isinstance(module, UnusedProjection):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (RandomSynthesizer, FactorizedRandomSynthesizer)):
            # the module that holds the tables: transformers initialises what a checkpoint lacked module by module
            random = isinstance(module, RandomSynthesizer)
            tables = draw_random_tables(self.config, module.layer_idx, "random" if random else "factorized_random")
            for tensor, table in zip((module.weight,) if random else (module.left, module.right), tables, strict=True):
                init.copy_(tensor, table)
        elif isinstance(module, EfficientSynthesizerAttention) and module.mixture_weights is not None:
            init.copy_(module.mixture_weights, torch.tensor(self.config.resolved_mixture_weights))

    @torch.no_grad()
    def redraw_random_synthesizers(self, seed: int | None = None) -> int:
        """Draw every layer's random tables (R, R1, R2) anew from `seed` (or one drawn from torch's global generator,
        rank 0's under torch.distributed) and store the seed in the config. Fixed tables are then those of the new seed,
        saved with the model. Returns the seed."""
        self.config.seed = shared_seed(2**31 - 1) if seed is None else int(seed)
        for layer in self.layers:
            attention = layer.self_attn
            for component in RANDOM_COMPONENTS:
                if component in attention.synthesizers:
                    tables = draw_random_tables(self.config, attention.layer_idx, component)
                    for tensor, table in zip(attention.synthesizers[component].state_dict().values(), tables,
                                             strict=True):
                        tensor.copy_(table)
        return self.config.seed


class EfficientSynthesizerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientSynthesizerConfig
    model_class = EfficientSynthesizerModel


class EfficientSynthesizerForCausalLM(EfficientForCausalLM):
    config_class = EfficientSynthesizerConfig
    model_class = EfficientSynthesizerModel


class EfficientSynthesizerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientSynthesizerConfig
    model_class = EfficientSynthesizerModel


class EfficientSynthesizerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientSynthesizerConfig
    model_class = EfficientSynthesizerModel


class EfficientSynthesizerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientSynthesizerConfig
    model_class = EfficientSynthesizerModel
