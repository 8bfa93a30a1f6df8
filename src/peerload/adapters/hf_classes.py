"""Which `transformers` class a model directory is built as.

The class named in config.json `architectures` when transformers has it, else the Auto class its
name's suffix points to (if the config's model_type is in that Auto class' mapping), else
`AutoModel`. A user's `--model-class` wins over all of them.
"""

from __future__ import annotations

import logging
from typing import Any

from peerload.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

# Architecture-name suffix -> Auto classes to try, most likely first.
_AUTO_BY_SUFFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ForCausalLM", ("AutoModelForCausalLM",)),
    ("LMHeadModel", ("AutoModelForCausalLM",)),
    ("ForMaskedLM", ("AutoModelForMaskedLM",)),
    (
        "ForConditionalGeneration",
        ("AutoModelForSeq2SeqLM", "AutoModelForImageTextToText", "AutoModelForSpeechSeq2Seq", "AutoModelForCausalLM"),
    ),
    ("ForSequenceClassification", ("AutoModelForSequenceClassification",)),
    ("ForTokenClassification", ("AutoModelForTokenClassification",)),
    ("ForQuestionAnswering", ("AutoModelForQuestionAnswering",)),
    ("ForMultipleChoice", ("AutoModelForMultipleChoice",)),
    ("ForImageClassification", ("AutoModelForImageClassification",)),
    ("ForObjectDetection", ("AutoModelForObjectDetection",)),
    ("ForSemanticSegmentation", ("AutoModelForSemanticSegmentation",)),
    ("ForAudioClassification", ("AutoModelForAudioClassification",)),
    ("ForCTC", ("AutoModelForCTC",)),
    ("ForPreTraining", ("AutoModelForPreTraining",)),
)


def transformers_module() -> Any:
    """The `transformers` package, or MissingExtraError naming the `hf` extra."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("loading Hugging Face models", "transformers", "hf") from None
    return transformers


def model_class(config: Any, name: str | None = None) -> type[Any]:
    """The class to build `config` as: `name` if given, else from `config.architectures` (see module doc).

    Raises:
        ConfigError: `name` is not a transformers model class, or no class fits the config.
    """
    transformers = transformers_module()
    if name:
        cls = getattr(transformers, name, None)
        if cls is None or not _is_model_class(transformers, cls):
            raise ConfigError(
                f"--model-class {name}: transformers {transformers.__version__} has no model class of that name; "
                "give a class such as BertModel or LlamaForCausalLM, or an Auto class such as AutoModelForMaskedLM"
            )
        return cls
    architectures = list(getattr(config, "architectures", None) or [])
    for arch in architectures:
        cls = getattr(transformers, arch, None)
        if cls is not None and _is_model_class(transformers, cls):
            return cls
    for arch in architectures:
        for suffix, autos in _AUTO_BY_SUFFIX:
            if arch.endswith(suffix):
                for auto_name in autos:
                    auto = getattr(transformers, auto_name, None)
                    if auto is not None and _supports(auto, config):
                        log.info("%s is not in transformers; building it as %s", arch, auto_name)
                        return auto
    if _supports(transformers.AutoModel, config):
        if architectures:
            log.info("no transformers class for %s; building AutoModel", ", ".join(architectures))
        return transformers.AutoModel
    raise ConfigError(
        f"transformers {transformers.__version__} has no class for architectures {architectures or '(none)'} "
        f"of model_type {getattr(config, 'model_type', '?')!r}: pass --model-class NAME"
    )


def build(cls: type[Any], config: Any) -> Any:
    """A model of class `cls` (a model class or an Auto class) from `config`, with fresh weights."""
    if hasattr(cls, "_model_mapping"):  # an Auto class
        return cls.from_config(config)
    return cls._from_config(config)


def _is_model_class(transformers: Any, cls: Any) -> bool:
    if not isinstance(cls, type):
        return False
    return issubclass(cls, transformers.PreTrainedModel) or hasattr(cls, "_model_mapping")


def _supports(auto: Any, config: Any) -> bool:
    return type(config) in auto._model_mapping
