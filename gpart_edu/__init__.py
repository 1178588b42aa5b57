"""gpart_edu: GPart, Uni-LoRA and LoRA as one theta -> Delta W map, for teaching and checking isometry.

    import gpart_edu as ge
    adapter = ge.attach(model, "gpart", d=4096, seed=0, targets=["query", "value"])
Taught in notebooks/00_quickstart.ipynb: attach, train, save, reload; peft folders in notebooks/07 (load_peft).
"""
from .core.adapter import Adapter, attach, get_adapter, load_adapter
from .core.interop import load_peft
from .core.methods import METHODS, GPart, LoRA, Target, UniLoRA
from .core.projections import PartitionProjection
from .core.targets import find_targets
from .errors import AdapterFileError, AttachError, ConfigError, GPartEduError, TargetError, UnsupportedLayerError

__version__ = "0.1.0"

__all__ = [
    "Adapter", "attach", "get_adapter", "load_adapter", "load_peft", "find_targets",
    "GPart", "UniLoRA", "LoRA", "METHODS", "Target", "PartitionProjection",
    "GPartEduError", "ConfigError", "TargetError", "AttachError", "AdapterFileError",
    "UnsupportedLayerError", "__version__",
]
