"""Every source family converts exactly: a tiny random model of each architecture, converted into EfficientLongformer
and run in its full-attention setting, reproduces the source's logits (fp32, <= 1e-5) on a right-padded batch."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    ElectraModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
)

from hf_efficient.conversion import ConversionError, convert_model, family_of
from hf_efficient.conversion.convert import source_head

TOLERANCE = 1e-5
LENGTH = 24
BERT_SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def sources():
    torch.manual_seed(0)
    roberta = RobertaConfig(**BERT_SIZES, max_position_embeddings=66, pad_token_id=1)
    distil = DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    electra = ElectraConfig(**BERT_SIZES, embedding_size=16, max_position_embeddings=64)
    return {
        "bert-seqcls": BertForSequenceClassification(BertConfig(**BERT_SIZES, max_position_embeddings=64,
                                                                num_labels=3)),
        "roberta-mlm": RobertaForMaskedLM(roberta),
        "roberta-seqcls": RobertaForSequenceClassification(RobertaConfig(**roberta.to_dict() | {"num_labels": 3})),
        "distilbert-mlm": DistilBertForMaskedLM(distil),
        "distilbert-seqcls": DistilBertForSequenceClassification(DistilBertConfig(**distil.to_dict()
                                                                                  | {"num_labels": 3})),
        "electra-discriminator": ElectraForPreTraining(electra),
        "electra-model": ElectraModel(electra),
        "electra-seqcls": ElectraForSequenceClassification(ElectraConfig(**electra.to_dict() | {"num_labels": 3})),
        "gpt2-seqcls": GPT2ForSequenceClassification(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=64, num_labels=3, pad_token_id=0)),
        "llama-untied": LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=1,
                                                     intermediate_size=64, max_position_embeddings=64,
                                                     tie_word_embeddings=False)),
    }


SOURCES = sources()


def batch(source) -> dict:
    pad = source.config.pad_token_id if source.config.pad_token_id is not None else 0
    ids = torch.randint(pad + 1, 99, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    ids[mask == 0] = pad
    return {"input_ids": ids, "attention_mask": mask}


def output(model, inputs):
    out = model(**inputs)
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_family_converts_exactly(name):
    source = SOURCES[name].eval()
    family = family_of(source.config)
    head = source_head(family, type(source).__name__)
    result = convert_model(source, family, "longformer", head, max_length=None, attention_window=2 * LENGTH)
    inputs = batch(source)
    with torch.no_grad():
        expected, actual = output(source, inputs), output(result.model, inputs)
    if name == "electra-discriminator":  # its replaced-token head has no counterpart: the backbone is compared
        expected = source.electra(**inputs).last_hidden_state
    if expected.dim() == 3:
        real = inputs["attention_mask"].bool()
        expected, actual = expected[real], actual[real]
    difference = (expected - actual).abs().max().item()
    assert difference <= TOLERANCE, f"{name}: max abs diff {difference:.2e}"


def test_electra_generator_is_refused_with_the_reason():
    from transformers import ElectraForMaskedLM

    generator = ElectraForMaskedLM(ElectraConfig(**BERT_SIZES, embedding_size=16, max_position_embeddings=64))
    family = family_of(generator.config)
    with pytest.raises(ConversionError, match="generator"):
        convert_model(generator, family, "longformer", source_head(family, "ElectraForMaskedLM"), max_length=None)
