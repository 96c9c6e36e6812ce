"""OpenELM (arXiv 2404.14619): layer-wise scaled decoder LM, HF format both ways, LLaMA tokenizer.

Importing registers the recipe model ``openelm`` and the ``openelm`` model type with
transformers' AutoConfig / AutoModelForCausalLM.
"""

from projects.openelm import hf  # noqa: F401  (registers "openelm" with the transformers Auto classes)
from projects.openelm import model  # noqa: F401  (registers the recipe model "openelm")
from projects.openelm import release  # noqa: F401  (registers the `corefm release` writer for "openelm")
from projects.openelm.config import OpenELMConfig, layer_specs, make_divisible, named_config
from projects.openelm.model import OpenELM

__all__ = ["OpenELM", "OpenELMConfig", "layer_specs", "make_divisible", "named_config"]


def add_cli(commands, data_commands) -> None:
    """``corefm data llama-tokenizer|train-tokenizer|tokenize|shakespeare`` and ``corefm openelm ...``."""
    from data_tools.text_cli import add_text_cli
    from projects.openelm.cli import add_openelm_cli, add_tokenizer_cli

    add_tokenizer_cli(data_commands)
    add_text_cli(data_commands)
    add_openelm_cli(commands)
