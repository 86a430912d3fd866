#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientBigbird (`hf-efficient convert --to bigbird`).

* learned positions copied end to end to --max-length;
* block-sparse attention: --set block_size=64 --set num_random_blocks=3 (the paper's defaults); no new parameters;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_bigbird.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "bigbird", "--expect-family", "bert", *sys.argv[1:]]))
