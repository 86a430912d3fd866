#!/usr/bin/env python
"""Convert a gpt2 checkpoint into a long-context EfficientLinearTransformer
(`hf-efficient convert --to linear_transformer`).

* GPT-2's Conv1D weights transposed, fused c_attn split into q/k/v; positions copied end to end;
* causal linear attention (elu(x)+1 kernel) in chunks (--set causal_chunk_size=64); generate() carries a
  constant-size state per layer; a different function from softmax attention until fine-tuned;
* a fidelity check against the source on real text, printed and written into the output's model card.

Pass --from a folder or Hub id.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_gpt2_to_linear_transformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "linear_transformer", "--expect-family", "gpt2", *sys.argv[1:]]))
