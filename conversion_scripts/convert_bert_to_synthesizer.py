#!/usr/bin/env python
"""Convert a bert checkpoint into a long-context EfficientSynthesizer (`hf-efficient convert --to synthesizer`).

* learned positions copied end to end to --max-length, which is also the Synthesizer's fixed length n (its
  synthetic tables have n rows; a longer input raises);
* synthetic attention starting at zero synthetic logits: --set synthesizer_type=dense+vanilla (or
  random+vanilla) starts as the source exactly; the default pure dense synthesizer starts as uniform
  attention; random tables cost n x n per head and layer, so keep n moderate;
* a fidelity check against the source on real text, printed and written into the output's model card.

The default source is the packaged all-MiniLM-L6-v2.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_bert_to_synthesizer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "synthesizer", "--expect-family", "bert", *sys.argv[1:]]))
