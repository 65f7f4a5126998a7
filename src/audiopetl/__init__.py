"""audiopetl: reproducible parameter-efficient transfer learning for pretrained audio models."""

__version__ = "0.1.0"
