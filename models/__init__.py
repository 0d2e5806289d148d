"""Hi-IR models (placeholder docstring, replaced at the end)."""
from .config import HiIRConfig
from .flows import DispersedAttention, WindowAttention
from .networks import HiIRColumnar, HiIRUNet, checkpoint_filter_fn
from .presets import PRESETS, build

__all__ = ["HiIRConfig", "PRESETS", "build", "checkpoint_filter_fn", "WindowAttention",
           "DispersedAttention", "HiIRColumnar", "HiIRUNet"]
