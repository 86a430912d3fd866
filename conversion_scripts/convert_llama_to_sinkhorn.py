#!/usr/bin/env python
"""Convert a llama checkpoint into a long-context EfficientSinkhorn (`hf-efficient convert --to sinkhorn`).

* Llama's q/k/v/o, gated MLP and RMSNorms kept; rotary positions kept (--rope-scaling to stretch them);
* causal Sparse Sinkhorn attention (--set block_size=64): each block sorted among the earlier blocks;
  new parameters: each layer's sorting network, initialised N(0, initializer_range^2) with zero biases (train it);
  with block_size >= the input length the model is its source exactly;
* a fidelity check against the source on real text, printed and written into the output's model card.

For example use --from packaged:smollm2 for the packaged SmolLM2-135M.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_llama_to_sinkhorn.py --from packaged:smollm2 --max-length 8192 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "sinkhorn", "--expect-family", "llama", *sys.argv[1:]]))
