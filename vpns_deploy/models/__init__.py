"""Models: built-in architectures, torchvision names, and safe checkpoint loading."""
from vpns_deploy.models.checkpoint import LoadedModel, load_model
from vpns_deploy.models.registry import ArchSpec, InputSpec, arch_names, get_arch

__all__ = ["ArchSpec", "InputSpec", "LoadedModel", "arch_names", "get_arch", "load_model"]
