#!/usr/bin/env python
"""Convert a gpt2 checkpoint into a long-context EfficientSparseTransformer
(`hf-efficient convert --to sparse_transformer`).

* GPT-2's Conv1D weights transposed, fused c_attn split into q/k/v; positions copied end to end;
* causal factorized attention (--set pattern=fixed or strided, --set local_size=128); no new parameters;
  KV-cache decoding in generate();
* a fidelity check against the source on real text, printed and written into the output's model card.

Pass --from a folder or Hub id.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_gpt2_to_sparse_transformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "sparse_transformer", "--expect-family", "gpt2", *sys.argv[1:]]))
