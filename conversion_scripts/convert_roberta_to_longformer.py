#!/usr/bin/env python
"""Convert a roberta checkpoint into a long-context EfficientLongformer (`hf-efficient convert --to longformer`).

* RoBERTa's position offset (pad_token_id + 1 rows) removed, then the table copied end to end;
* sliding window and global q/k/v copied from the local ones: the allenai/longformer-base-4096 recipe;
* a fidelity check against the source on real text, printed and written into the output's model card.

Pass --from a folder or Hub id.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_roberta_to_longformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "longformer", "--expect-family", "roberta", *sys.argv[1:]]))
