"""Initialisation of the parameters a variant adds to a converted backbone, chosen so it starts at its source.

Each function receives the mapped weights (head-level names) and the target config, and adds what is missing.
"""

import torch


def longformer_global_projections(weights: dict[str, torch.Tensor], config) -> list[str]:
    """Global q/k/v start as copies of the local q/k/v (the Longformer paper, section 5): before fine-tuning, a
    global token scores keys exactly as the source model would."""
    added = []
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn"
        for name in ("q", "k", "v"):
            for kind in ("weight", "bias"):
                local, target = f"{prefix}.{name}_proj.{kind}", f"{prefix}.{name}_global_proj.{kind}"
                if local in weights and target not in weights:
                    weights[target] = weights[local].clone()
                    added.append(target)
    return added


NEW_PARAMETERS = {
    "efficient_longformer": longformer_global_projections,
}
