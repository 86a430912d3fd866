#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientLinearTransformer
(`hf-efficient convert --to linear_transformer`).

* learned positions copied end to end to --max-length;
* softmax replaced by the elu(x)+1 kernel over the source's own q/k/v (no new parameters): a different
  function from the source until fine-tuned, so the check reports the as-converted difference only;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_linear_transformer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "linear_transformer", "--expect-family", "bert", *sys.argv[1:]]))
