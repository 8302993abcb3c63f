"""segkit: from a segmentation competition's files to a validated RLE submission."""

from segkit import _compat  # noqa: F401  (must run before timm / smp / torchvision are imported)

__version__ = "0.1.0"
