"""Lambda Cloud provider (its REST API over the standard library: no SDK to install or import)."""
from .driver import LambdaCloud

PROVIDER = LambdaCloud

__all__ = ["LambdaCloud", "PROVIDER"]
