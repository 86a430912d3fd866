#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientMemoryCompressed
(`hf-efficient convert --to memory_compressed`).

* learned positions copied end to end to --max-length;
* layers alternate local attention in blocks (--set block_size=256) and attention over keys and values
  pooled by stride-c convolutions (--set compression_factor=3), which start as average pooling;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_memory_compressed.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "memory_compressed", "--expect-family", "bert", *sys.argv[1:]]))
