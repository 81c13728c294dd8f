"""Authentication and authorization of every call to a Grace gRPC server.

Every Grace gRPC port is mutual TLS: the handshake already required a client certificate
issued by the Grace CA and verified it (grpcio cannot request a client certificate without
requiring it). `Authorizer` is a server interceptor. For each call it finds the principal:
a bearer token in the `authorization` metadata, else the identity the certificate's URI
SAN names (a component or a domain; a `client` certificate, as people's tools hold, only
opens the connection and carries no authority without a token). Then it checks the
method's rule from `services.common.access`. Callers with no authority reach health
only; everything else answers UNAUTHENTICATED with how to authenticate, or
PERMISSION_DENIED with the rule.

The principal of the call is available to the servicer and its cores through
`current_principal()` (None on an insecure server), and the certificate the caller
presented (its identity and bound signing key) through `caller_certificate(context)`.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from services.common.access import (
    COMPONENT,
    HOW_TO_AUTHENTICATE,
    Level,
    Principal,
    Rule,
    rule_for,
)
from services.common.pki import Identity, PkiError, bound_signing_key, certificate_identity
from services.common.tokens import TokenValidator

log = logging.getLogger(__name__)

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "grace_principal", default=None
)


def current_principal() -> Principal | None:
    """The authenticated caller of the call being served (None when security is off)."""
    return _PRINCIPAL.get()


def acting_for(claimed: str) -> str:
    """Who a call acts for, as governance should judge it.

    The authenticated principal, never a name the caller chose, except for Grace
    components, which act on behalf of others (the immune kernel heals as itself, a
    relay names its origin) and whose claim (an `x-actor` header) is trusted. With
    security off, the claim is taken as given.
    """
    principal = current_principal()
    if principal is None or principal.is_component:
        return claimed
    return principal.name


def vouches_for(source: str) -> bool:
    """True when the authenticated caller of this call is `source` itself (its domain
    identity or component certificate): an event it publishes unsigned is then
    authenticated by the transport instead of a signature. Nobody else, administrators
    included, publishes unsigned in the name of a source that has an identity."""
    principal = current_principal()
    return principal is not None and principal.acts_as(source)


@dataclass(frozen=True)
class CallerCertificate:
    """What the certificate a caller presented says.

    Attributes:
        identity: The workload its URI SAN names.
        signing_key: The raw Ed25519 event-signing key it binds, or None.
    """

    identity: Identity
    signing_key: bytes | None


def caller_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> CallerCertificate | None:
    """The certificate the caller presented in the TLS handshake (which verified it
    against the Grace CA), or None without one or when it names no Grace identity.

    Parsed per call: for the few RPCs that bind keys (trust registration, joining), not
    for the hot path.
    """
    certs = list(context.auth_context().get("x509_pem_cert", ()))
    if not certs:
        return None
    try:
        cert = x509.load_pem_x509_certificate(certs[0])
        return CallerCertificate(certificate_identity(cert), bound_signing_key(cert))
    except (PkiError, ValueError):
        return None


class AuthError(Exception):
    """Authentication failed; `code` is the status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bearer_token(value: str) -> str | None:
    """The token of an `authorization: Bearer <token>` value, or None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass
class Authenticator:
    """Turns credentials into principals.

    Args:
        tokens: Validates bearer tokens.
    """

    tokens: TokenValidator

    def __post_init__(self) -> None:
        # Certificate digest -> principal (None for client certificates), bounded.
        self._certificates: OrderedDict[bytes, Principal | None] = OrderedDict()

    def from_token(self, authorization: str) -> Principal:
        """The principal of an `authorization` header value; raises AuthError."""
        token = bearer_token(authorization)
        if token is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization: expected 'Bearer <token>'; " + HOW_TO_AUTHENTICATE,
            )
        record = self.tokens.validate(token)
        if record is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization: the bearer token is unknown, expired or revoked; "
                + HOW_TO_AUTHENTICATE,
            )
        return Principal(record.principal, frozenset(record.roles), "token")

    def from_certificate(self, cert_pem: bytes) -> Principal | None:
        """The principal named by a client certificate the TLS handshake verified.

        Returns None for a `client` certificate: it carries no authority of its own.
        """
        key = hashlib.sha256(cert_pem).digest()
        if key in self._certificates:
            return self._certificates[key]
        try:
            identity = certificate_identity(x509.load_pem_x509_certificate(cert_pem))
        except (PkiError, ValueError) as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {exc}") from None
        principal: Principal | None = None
        if identity.kind == "component":
            principal = Principal(identity.principal, frozenset({COMPONENT}), "certificate")
        elif identity.kind == "domain":
            principal = Principal(
                identity.principal, frozenset({identity.principal}), "certificate"
            )
        self._certificates[key] = principal
        if len(self._certificates) > 4096:
            self._certificates.popitem(last=False)
        return principal

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        """The caller of a call, or None when it presented no credential."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return self.from_token(str(value))
        certs = list(context.auth_context().get("x509_pem_cert", ()))
        if certs:
            return self.from_certificate(certs[0])
        return None


def check(rule: Rule | None, principal: Principal | None, request: Any, method: str) -> None:
    """Raises AuthError unless `principal` may call `method` with `request`."""
    if rule is None:
        raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"{method}: no access rule; denied")
    reason = rule.check(principal, request)
    if reason is None:
        return
    if principal is None:
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{method} needs an authenticated caller: " + HOW_TO_AUTHENTICATE,
        )
    raise AuthError(
        grpc.StatusCode.PERMISSION_DENIED, f"{method}: {principal.name} denied: {reason}"
    )


class Authorizer(grpc.aio.ServerInterceptor):
    """The server interceptor: authenticates, checks the access table, exposes the principal.

    Args:
        authenticator: Resolves tokens and certificates.
        rules: The rule of a method (the Grace table by default).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        rules: Callable[[str], Rule | None] = rule_for,
    ) -> None:
        self._authenticator = authenticator
        self._rules = rules

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rule = self._rules(method)
        if rule is not None and rule.level == Level.PUBLIC:
            # Health: grpcio's own servicer (its Watch writes with context.write()).
            return handler  # type: ignore[no-any-return]  # grpc's handler is untyped here
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, rule, True), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, rule, True), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, rule, False), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, rule, False), **kwargs
        )

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        rule: Rule | None,
        request: Any,
        method: str,
    ) -> Principal | None:
        try:
            principal = self._authenticator.authenticate(context)
            check(rule, principal, request, method)
        except AuthError as exc:
            await context.abort(exc.code, exc.message)
        return principal

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, rule: Rule | None, unary: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self._admit(context, rule, request if unary else None, method)
            token = _PRINCIPAL.set(principal)
            try:
                return await behavior(request, context)
            finally:
                _PRINCIPAL.reset(token)

        return wrapper

    def _stream(
        self,
        behavior: Callable[..., AsyncIterator[Any]],
        method: str,
        rule: Rule | None,
        unary: bool,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            principal = await self._admit(context, rule, request if unary else None, method)
            _PRINCIPAL.set(principal)
            async for response in behavior(request, context):
                yield response

        return wrapper
