"""archsearch: hardware-aware architecture search for efficient diffusion backbones."""

__version__ = "0.1.0"
