#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientSparseTransformer
(`hf-efficient convert --to sparse_transformer`).

* learned positions copied end to end to --max-length;
* factorized attention, bidirectional: --set pattern=fixed --set local_size=128 --set num_summary=32 (the
  paper's text setting; pattern=strided as an option); no new parameters;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_sparse_transformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "sparse_transformer", "--expect-family", "bert", *sys.argv[1:]]))
