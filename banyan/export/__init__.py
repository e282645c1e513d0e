"""banyan.export: trained models out of banyan, in the formats other tools load.

* `banyan export hf` (hf.py): a Hugging Face transformers folder (config, safetensors, tokenizer,
  generation config, model card).
* `banyan export gguf` (gguf.py): one GGUF file for llama.cpp (Llama models, byte-level BPE tokenizers).

Shared steps (resolve and load a checkpoint, stage the output and rename it into place) live in
source.py; the model card in card.py.
"""
