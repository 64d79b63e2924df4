"""Adapters: LoRA, OFT, BOFT, GOFT, qGOFT, ETHER, ETHER+, DiffuseKronA, LoKr and dense behind one merge contract.

Pick a method by name in ``METHODS``, build its config, and :func:`add_adapter` it to a model; every method
supports a strength ``scale`` that keeps orthogonal methods orthogonal (see ``studio.adapters.base``). Adapter files
move to and from PEFT, diffusers, kohya/A1111/ComfyUI, LyCORIS and dense formats through ``studio.adapters.formats``
(``export_adapter``, ``import_adapter``); ``load_adapter`` reads any of them directly.
"""

from studio.adapters.base import Adapter, AdditiveAdapter, LayerShape, MultiplicativeAdapter
from studio.adapters.formats import FORMATS, detect_format, export_adapter, import_adapter
from studio.adapters.inject import (
    DEFAULT_TARGETS,
    adapter_layers,
    adapter_state_dict,
    adapter_targets,
    add_adapter,
    bake_adapters,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    layers_with,
    merge_adapters,
    orthogonality_penalty,
    set_adapter_scale,
    trainable_parameters,
    unmerge_adapters,
)
from studio.adapters.io import read_adapter_header, save_adapter
from studio.adapters.layer import AdapterLayer
from studio.adapters.loading import applied_adapters, load_adapter, load_adapters
from studio.adapters.peft_interop import export_peft_lora, export_peft_oft, import_peft_lora
from studio.adapters.registry import (
    METHODS,
    AdapterConfig,
    BOFTConfig,
    DenseConfig,
    DiffuseKronAConfig,
    ETHERConfig,
    ETHERPlusConfig,
    GOFTConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    QGOFTConfig,
    config_from_dict,
    config_from_options,
    config_to_dict,
)

__all__ = [
    "DEFAULT_TARGETS",
    "FORMATS",
    "METHODS",
    "Adapter",
    "AdapterConfig",
    "AdapterLayer",
    "AdditiveAdapter",
    "BOFTConfig",
    "DenseConfig",
    "DiffuseKronAConfig",
    "ETHERConfig",
    "ETHERPlusConfig",
    "GOFTConfig",
    "LayerShape",
    "LoKrConfig",
    "LoRAConfig",
    "MultiplicativeAdapter",
    "OFTConfig",
    "QGOFTConfig",
    "adapter_layers",
    "adapter_state_dict",
    "adapter_targets",
    "add_adapter",
    "applied_adapters",
    "bake_adapters",
    "config_from_dict",
    "config_from_options",
    "config_to_dict",
    "delete_adapter",
    "detect_format",
    "disable_adapters",
    "enable_adapters",
    "export_adapter",
    "export_peft_lora",
    "export_peft_oft",
    "import_adapter",
    "import_peft_lora",
    "layers_with",
    "load_adapter",
    "load_adapters",
    "merge_adapters",
    "orthogonality_penalty",
    "read_adapter_header",
    "save_adapter",
    "set_adapter_scale",
    "trainable_parameters",
    "unmerge_adapters",
]
