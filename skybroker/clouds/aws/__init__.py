"""AWS EC2 provider (boto3, imported only inside the driver's calls)."""
from .driver import AWSCloud

PROVIDER = AWSCloud

__all__ = ["AWSCloud", "PROVIDER"]
