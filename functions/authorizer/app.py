"""$connect REQUEST authorizer: allow the connection when its token checks out.

An allowed caller's principal id reaches $connect and every later message event in
requestContext.authorizer. A refused one gets 401: API Gateway's convention is to raise
Exception("Unauthorized"). Tokens and secrets are never logged.
"""

from llmstream.auth import AuthSettings, Denied, allow_policy, authorize
from llmstream.core.observability import logger

settings = AuthSettings.from_env()


def _hmac_secret() -> str:
    """The signing key, from Secrets Manager, cached by Powertools for five minutes."""
    from aws_lambda_powertools.utilities.parameters import get_secret

    try:
        return str(get_secret(settings.hmac_secret_name, max_age=300))
    except Exception as exc:  # the name is logged, never a value
        logger.error(
            "could not read the signing secret",
            extra={"secret_name": settings.hmac_secret_name, "error": type(exc).__name__},
        )
        raise Denied("misconfigured") from None


@logger.inject_lambda_context(clear_state=True, log_event=False)  # events hold tokens
def lambda_handler(event, context):
    method_arn = event.get("methodArn")
    try:
        if not isinstance(method_arn, str) or not method_arn.startswith("arn:"):
            raise Denied("malformed")
        principal = authorize(event, settings, hmac_secret=_hmac_secret)
    except Denied as denied:
        logger.info("connection refused", extra={"mode": settings.mode, "reason": denied.reason})
        raise Exception("Unauthorized") from None
    logger.info("connection allowed", extra={"mode": settings.mode, "principal_id": principal.id})
    return allow_policy(principal, method_arn)
