"""Native Llama-family models: config, decoder, safetensors loading, training and HF export."""

from llm_core.models.config import ModelConfig, is_supported, read_config_dict
from llm_core.models.hf_export import hf_config_dict, to_hf_names
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.loader import load_model
from llm_core.models.training import TrainableCausalLM

__all__ = [
    "LlamaForCausalLM", "ModelConfig", "TrainableCausalLM", "hf_config_dict", "is_supported",
    "load_model", "read_config_dict", "to_hf_names",
]
