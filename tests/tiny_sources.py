"""Tiny random checkpoints of every source family, saved as a Hub-style folder (hidden 32, 2 layers, 64 positions):
the sources of tests/test_every_target.py and tests/test_conversion_scripts.py."""

import pytest
import torch
from test_conversion import TOKENS
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

VOCAB = 99
SOURCE_LENGTH = 64
BERT_SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
CAUSAL_SOURCES = ("gpt2", "llama")
INIT_STD = 0.05  # not transformers' 0.02: attention logits large enough that attention is far from uniform


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread avoids the thread start-up and contention that dominate at hidden size 32 (a module
    using it: `pytestmark = pytest.mark.usefixtures("one_thread")` and import it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_source(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random model of `kind` (a source family, or xlm-roberta) with the head its checkpoints usually carry.
    Weights drawn with std INIT_STD, so that a converted model attending to other keys (or through another kernel) is
    visibly off: as converted with the testers' sparse knobs, 3e-4 to 3 away from its source (0.02: down to 3e-6)."""
    torch.manual_seed(seed)
    roberta_positions = dict(max_position_embeddings=SOURCE_LENGTH + 2, pad_token_id=1)  # offset by pad_token_id + 1
    sizes = {**BERT_SIZES, "initializer_range": INIT_STD}
    builders = {
        "bert": lambda: BertForMaskedLM(BertConfig(**sizes, max_position_embeddings=SOURCE_LENGTH)),
        "roberta": lambda: RobertaForMaskedLM(RobertaConfig(**sizes, **roberta_positions)),
        "xlm-roberta": lambda: XLMRobertaForMaskedLM(XLMRobertaConfig(**sizes, **roberta_positions)),
        "distilbert": lambda: DistilBertForMaskedLM(DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=SOURCE_LENGTH,
            initializer_range=INIT_STD)),
        # the discriminator as released (google/electra-*-discriminator): its replaced-token head is not carried over
        "electra": lambda: ElectraForPreTraining(ElectraConfig(**sizes, embedding_size=16,
                                                               max_position_embeddings=SOURCE_LENGTH)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                   n_positions=SOURCE_LENGTH, pad_token_id=0, bos_token_id=1,
                                                   eos_token_id=1, initializer_range=INIT_STD)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**sizes, num_key_value_heads=2,
                                                      max_position_embeddings=SOURCE_LENGTH, pad_token_id=0,
                                                      bos_token_id=1, eos_token_id=1)),
    }
    return builders[kind]().eval()


def save_tiny_source(kind: str, folder, seed: int = 0) -> torch.nn.Module:
    """Save a tiny `kind` source in `folder` (BERT with its WordPiece tokenizer, the others weights and config only)
    and return the model."""
    if kind == "bert":
        write_bert_tokenizer(folder)
    model = tiny_source(kind, seed)
    model.save_pretrained(folder)
    return model


def write_bert_tokenizer(folder) -> None:
    """A WordPiece tokenizer over the VOCAB tokens of tests/test_conversion.py."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TOKENS + [f"word{i}" for i in range(VOCAB - len(TOKENS))]))
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
