"""megatron-core dist checkpoints <-> Hugging Face ``Qwen3ForCausalLM`` directories.

- ``names``: the tensor map (checkpoint names, HF names, QKV/fc1/vocabulary layouts); the one place
  that knows it.
- ``hf_config``: ``ModelShape`` <-> config.json; which shapes convert.
- ``hf_files``: safetensors reading and sharded writing; outputs that appear only when complete.
- ``export`` / ``import_``: the two directions; ``tools/convert_checkpoint.py`` is their command line.
"""

from megatron_soda.convert.export import ExportConfig, export_checkpoint
from megatron_soda.convert.import_ import ImportConfig, import_checkpoint
from megatron_soda.convert.names import ConversionError

__all__ = ["ConversionError", "ExportConfig", "ImportConfig", "export_checkpoint", "import_checkpoint"]
