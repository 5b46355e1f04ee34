"""EC2 error codes → typed errors with a scope. Failover reads only the type; the code and the cloud's
message are kept for the failover report."""
from __future__ import annotations

from ...errors import (CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError, QuotaError,
                       ThrottledError)

# Capacity in one availability zone: try the next zone.
ZONE_CODES = {
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InsufficientFreeAddressesInSubnet", "Unsupported", "SpotMaxPriceTooLow",
    "InsufficientCapacityOnOutpost",
}
# Quota or account limits for a region: skip the region.
REGION_CODES = {
    "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded", "PendingVerification",
    "OptInRequired", "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
    "AddressLimitExceeded", "SecurityGroupLimitExceeded", "VPCLimitExceeded", "KeyPairLimitExceeded",
    "InvalidSubnetID.NotFound", "VPCIdNotSpecified",
}
# API rate limits: back off and retry the same place (botocore's own retries already gave up).
THROTTLE_CODES = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "EC2ThrottledException",
}
# Credentials or permissions: the whole cloud is unusable for us.
CLOUD_CODES = {
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
    "AccessDenied", "AccessDeniedException", "Blocked", "UnrecognizedClientException",
}


def classify(exc: BaseException, place: Place) -> ProvisionError | None:
    """A typed error for an SDK exception, or None if it is not a cloud refusal (a bug: re-raise)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsError(f"no usable AWS credentials ({exc})", place, code="NoCredentials",
                                hint="run `aws configure` or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    from botocore import exceptions as bx

    setup = (bx.ProfileNotFound, bx.SSOError, bx.TokenRetrievalError, bx.ConfigParseError, bx.ConfigNotFound,
             bx.CredentialRetrievalError, bx.InvalidConfigError)
    if isinstance(exc, setup):  # the local AWS setup (profile, SSO login, config file), not an API answer
        sso = isinstance(exc, (bx.SSOError, bx.TokenRetrievalError))
        return CredentialsError(f"the AWS credentials cannot be loaded ({type(exc).__name__}: {exc})", place,
                                code=type(exc).__name__,
                                hint=("run `aws sso login` (the SSO login has expired or was never made)" if sso else
                                      "check AWS_PROFILE and ~/.aws/config / ~/.aws/credentials (`aws configure list`)"))
    if isinstance(exc, EndpointConnectionError):
        return QuotaError(f"cannot reach the EC2 endpoint ({exc})", place, code="EndpointConnectionError")
    if not isinstance(exc, ClientError):
        return None
    err = exc.response.get("Error", {})
    code = err.get("Code", "Unknown")
    msg = err.get("Message", str(exc))
    if code in THROTTLE_CODES:
        return ThrottledError(msg, place, code=code)
    if code in ZONE_CODES:
        return CapacityError(msg, place, code=code)
    if code in REGION_CODES:
        return QuotaError(msg, place, code=code)
    if code in CLOUD_CODES:
        return CredentialsError(msg, place, code=code,
                                hint="check the IAM permissions listed in the README (AWS setup)")
    return InvalidRequestError(msg, place, code=code)
