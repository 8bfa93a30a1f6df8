"""Which transformers class a config is built as (config.json architectures, Auto fallbacks, override)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from peerload.adapters.hf_classes import model_class  # noqa: E402
from peerload.errors import ConfigError  # noqa: E402


def config(kind: str, architectures: list[str] | None) -> object:
    cfg = transformers.AutoConfig.for_model(kind)
    cfg.architectures = architectures
    return cfg


@pytest.mark.parametrize(
    ("kind", "architectures", "override", "expected"),
    [
        # the class config.json names, when transformers has it
        ("bert", ["BertModel"], None, "BertModel"),
        ("bert", ["BertForMaskedLM"], None, "BertForMaskedLM"),
        ("gpt2", ["GPT2LMHeadModel"], None, "GPT2LMHeadModel"),
        ("t5", ["T5ForConditionalGeneration"], None, "T5ForConditionalGeneration"),
        ("vit", ["ViTForImageClassification"], None, "ViTForImageClassification"),
        # names transformers lacks: the Auto class of the suffix, if it maps this model_type
        ("bert", ["MyBertForMaskedLM"], None, "AutoModelForMaskedLM"),
        ("llama", ["MyLlamaForCausalLM"], None, "AutoModelForCausalLM"),
        ("t5", ["MyT5ForConditionalGeneration"], None, "AutoModelForSeq2SeqLM"),
        ("vit", ["MyViTForImageClassification"], None, "AutoModelForImageClassification"),
        # nothing more specific applies: AutoModel
        ("bert", ["MyBertEncoder"], None, "AutoModel"),
        ("bert", None, None, "AutoModel"),
        ("vit", ["MyViTForCausalLM"], None, "AutoModel"),  # no causal-LM ViT in transformers
        # --model-class wins
        ("bert", ["BertModel"], "BertForMaskedLM", "BertForMaskedLM"),
        ("bert", ["BertModel"], "AutoModelForMaskedLM", "AutoModelForMaskedLM"),
    ],
)
def test_model_class(kind, architectures, override, expected):
    assert model_class(config(kind, architectures), override).__name__ == expected


@pytest.mark.parametrize("bad", ["NoSuchModel", "BertConfig", "AutoTokenizer", "is_torch_available"])
def test_bad_override_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=f"--model-class {bad}: .*no model class of that name"):
        model_class(config("bert", ["BertModel"]), bad)
