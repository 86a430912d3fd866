#!/usr/bin/env python
"""Convert a llama checkpoint into a long-context EfficientPerformer (`hf-efficient convert --to performer`).

* rotary positions kept as they are; q/k rotated before the feature map;
* causal FAVOR+; generate() carries a constant-size state per layer;
* a fidelity check against the source on real text, printed and written into the output's model card.

For example use --from packaged:smollm2 for the packaged SmolLM2-135M.
Any other `hf-efficient convert` option works (--max-length, --head, --set KEY=VALUE, --overwrite):

    python conversion_scripts/convert_llama_to_performer.py --from SOURCE --max-length 4096 --out DIR

A source of another family is refused before any work is done.
"""

import sys

from hf_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--to", "performer", "--expect-family", "llama", *sys.argv[1:]]))
