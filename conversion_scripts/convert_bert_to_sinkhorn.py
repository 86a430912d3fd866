#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientSinkhorn (`hf-efficient convert --to sinkhorn`).

* learned positions copied end to end to --max-length;
* bidirectional Sparse Sinkhorn attention (--set block_size=64, --set sortcut_blocks=2 for SortCut);
  new parameters: each layer's sorting network, initialised N(0, initializer_range^2) with zero biases (train it);
  with block_size >= the input length the model is its source exactly;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_sinkhorn.py --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "sinkhorn", "--expect-family", "bert", *sys.argv[1:]]))
