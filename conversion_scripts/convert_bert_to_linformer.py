#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientLinformer (`hf-efficient convert --to linformer`).

* learned positions copied end to end to --max-length, which is also Linformer's fixed length n (E and F have
  n columns; a longer input raises): pick the length you will fine-tune at;
* keys and values projected along the sequence to k rows (--set projected_length=256, the paper's), E and F
  starting as average pooling over k segments (--set projection_init=random for the paper's random start);
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_linformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "linformer", "--expect-family", "bert", *sys.argv[1:]]))
