#!/usr/bin/env python
"""Convert a distilbert checkpoint into a long-context EfficientLongformer (`hf-efficient convert --to longformer`).

* positions copied end to end; DistilBERT's ReLU pre-classifier kept as the pooler;
* sliding window and global projections copied from the local ones;
* a fidelity check against the source on real text, printed and written into the output's model card.

Pass --from a folder or Hub id.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_distilbert_to_longformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "longformer", "--expect-family", "distilbert", *sys.argv[1:]]))
