"""Hugging Face classes for OpenELM, registered with the Auto classes on import.

After ``import projects.openelm``, ``AutoConfig``/``AutoModelForCausalLM.from_pretrained(folder)``
load an OpenELM folder (ours or Apple's layout) without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from projects.openelm.hf.configuration_openelm import OpenELMConfig
from projects.openelm.hf.modeling_openelm import OpenELMForCausalLM, OpenELMModel

AutoConfig.register("openelm", OpenELMConfig, exist_ok=True)
AutoModelForCausalLM.register(OpenELMConfig, OpenELMForCausalLM, exist_ok=True)

__all__ = ["OpenELMConfig", "OpenELMForCausalLM", "OpenELMModel"]
