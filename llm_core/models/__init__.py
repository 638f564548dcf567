"""Native Llama-family models: config, decoder, and safetensors loading."""

from llm_core.models.config import ModelConfig, is_supported, read_config_dict
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.loader import load_model, resolve_device, resolve_dtype

__all__ = [
    "LlamaForCausalLM", "ModelConfig", "is_supported", "load_model",
    "read_config_dict", "resolve_device", "resolve_dtype",
]
