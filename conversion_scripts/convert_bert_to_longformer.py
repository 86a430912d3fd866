#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientLongformer (`hf-efficient convert --to longformer`).

* learned positions copied end to end to --max-length (the Longformer recipe);
* every layer gets a sliding window (--attention-window) and global q/k/v projections copied from the local ones;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_longformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "longformer", "--expect-family", "bert", *sys.argv[1:]]))
