#!/usr/bin/env python
"""Convert a gpt2 checkpoint into a long-context EfficientSinkhorn (`hf-efficient convert --to sinkhorn`).

* GPT-2's Conv1D weights transposed, fused c_attn split into q/k/v; positions copied end to end;
* causal Sparse Sinkhorn attention (--set block_size=64): each block sorted among the earlier blocks;
  new parameters: each layer's sorting network, initialised N(0, initializer_range^2) with zero biases (train it);
  with block_size >= the input length the model is its source exactly;
* a fidelity check against the source on real text, printed and written into the output's model card.

Pass --from a folder or Hub id.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_gpt2_to_sinkhorn.py --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "sinkhorn", "--expect-family", "gpt2", *sys.argv[1:]]))
