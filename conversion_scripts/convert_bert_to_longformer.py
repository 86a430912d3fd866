#!/usr/bin/env python
"""Convert a BERT-family checkpoint (BERT, sentence-transformers BERT folders) into a long-context
EfficientLongformer, the Longformer paper's recipe (Beltagy et al., arXiv 2004.05150, section 5):

* learned positions extended to --max-length by copying the 512-row table end to end;
* every layer gets a sliding window (--attention-window) and global q/k/v projections copied from the local ones;
* a fidelity check: with a window covering the whole source length, the converted model must reproduce the
  source's outputs on real text; the figure is printed and written into the output's model card.

    python conversion_scripts/convert_bert_to_longformer.py --out minilm-longformer-4096
    python conversion_scripts/convert_bert_to_longformer.py --from bert-base-uncased --max-length 4096 --out DIR

Same as `hf-efficient convert --to longformer`.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "longformer", *sys.argv[1:]]))
