"""rarekit: fused PyTorch kernels and tools for class imbalance and rare tokens."""
from rarekit._backend import backend_info, set_backend
from rarekit.counting import count

__all__ = ["backend_info", "count", "set_backend"]
__version__ = "0.1.0"
