"""vla-ttq: test-time quantization for the pi0.5 vision-language-action policy."""

from .config import QuantConfig, load_yaml, save_yaml

__version__ = "0.1.0"
__all__ = ["QuantConfig", "load_yaml", "save_yaml", "__version__"]
