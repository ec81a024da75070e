"""LLaMA-7B built from transformers' LlamaConfig defaults: `memplan analyze examples/llama_7b.py`.

memplan imports this file with torch's default device set to `meta`, so the 6.7 B parameters
get shapes and dtypes but no memory.
"""

from transformers import LlamaConfig, LlamaForCausalLM


def build_model():
    return LlamaForCausalLM(LlamaConfig())
