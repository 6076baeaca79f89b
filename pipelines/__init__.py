"""The staged pipeline: run directories, manifests and the stages that fill them."""
