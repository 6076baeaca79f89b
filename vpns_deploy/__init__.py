"""vpns-deploy: VPNs pruning (visual prompt + learned masks) for models people ship."""
__version__ = "0.1.0"
