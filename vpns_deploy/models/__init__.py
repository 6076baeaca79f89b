"""Models: built-in architectures, torchvision and timm names, EfficientNet-Lite, safe checkpoint loading."""
from vpns_deploy.models.checkpoint import LoadedModel, load_model
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.models.registry import ArchSpec, InputSpec, arch_names, get_arch

__all__ = ["ArchSpec", "InputOverrides", "InputSpec", "LoadedModel", "arch_names", "get_arch", "load_model"]
