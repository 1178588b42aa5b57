"""gpart_edu: GPart, Uni-LoRA and LoRA as one theta -> Delta W map, for teaching and checking isometry.

    import gpart_edu as ge
    adapter = ge.attach(model, "gpart", d=4096, seed=0, targets=["query", "value"])
Taught in notebooks/00_quickstart.ipynb: attach, train, save, reload; peft folders in notebooks/07 (load_peft);
``ge.audit`` (the isometry audit of any PEFT method) in notebooks/08_isometry_audit.ipynb.
"""
import importlib

from .core.adapter import Adapter, attach, get_adapter, load_adapter
from .core.interop import load_peft
from .core.methods import METHODS, GPart, LoRA, Target, UniLoRA
from .core.projections import PartitionProjection
from .core.targets import find_targets
from .errors import AdapterFileError, AttachError, ConfigError, GPartEduError, TargetError, UnsupportedLayerError

__version__ = "0.1.0"

# Entry points of the lab reachable from the face, loaded on first use: ``import gpart_edu`` stays light
# (tests/test_layout.py checks both that the face loads no wing and that this table is all it defers).
LAZY_FACE = {"audit": "gpart_edu.lab.audit"}


def __getattr__(name: str):
    """Load a lab entry point named in LAZY_FACE on first access (``ge.audit``)."""
    if name in LAZY_FACE:
        return getattr(importlib.import_module(LAZY_FACE[name]), name)
    raise AttributeError(f"module 'gpart_edu' has no attribute {name!r}")

__all__ = [
    "Adapter", "attach", "get_adapter", "load_adapter", "load_peft", "find_targets", "audit",
    "GPart", "UniLoRA", "LoRA", "METHODS", "Target", "PartitionProjection",
    "GPartEduError", "ConfigError", "TargetError", "AttachError", "AdapterFileError",
    "UnsupportedLayerError", "__version__",
]
