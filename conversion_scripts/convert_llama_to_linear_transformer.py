#!/usr/bin/env python
"""Convert a llama checkpoint into a long-context EfficientLinearTransformer
(`hf-efficient convert --to linear_transformer`).

* rotary positions kept as they are (or rescaled: --rope-scaling linear:FACTOR or yarn:FACTOR); q and k
  rotated before the feature map; grouped KV heads kept;
* causal linear attention (elu(x)+1 kernel); generate() carries a constant-size state per layer; a
  different function from softmax attention until fine-tuned;
* a fidelity check against the source on real text, printed and written into the output's model card.

For example use --from packaged:smollm2 for the packaged SmolLM2-135M.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_llama_to_linear_transformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "linear_transformer", "--expect-family", "llama", *sys.argv[1:]]))
