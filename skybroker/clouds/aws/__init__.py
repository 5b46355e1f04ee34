"""AWS EC2 driver (boto3). Imported only when a cluster lives on AWS."""
from .driver import AWSCloud

__all__ = ["AWSCloud"]
