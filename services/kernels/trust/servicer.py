"""gRPC adapter of the trust kernel: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from grace.kernels.trust.v1 import trust_pb2 as pb
from grace.kernels.trust.v1 import trust_pb2_grpc as pb_grpc
from services.common.auth import caller_certificate, current_principal
from services.common.errors import InvalidArgument
from services.common.pagination import encoded_size
from services.common.timestamps import to_timestamp
from services.kernels.trust.claims import Claimant
from services.kernels.trust.model import Certification, Identity, KeyRecord, KeyState, Level
from services.kernels.trust.trust import TrustKernel

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_STATE = {
    KeyState.ACTIVE: pb.KEY_STATE_ACTIVE,
    KeyState.ROTATED: pb.KEY_STATE_ROTATED,
    KeyState.REVOKED: pb.KEY_STATE_REVOKED,
}
LEVEL_TO_PROTO = {
    Level.NONE: pb.TRUST_LEVEL_NONE,
    Level.PARTIAL: pb.TRUST_LEVEL_PARTIAL,
    Level.FULL: pb.TRUST_LEVEL_FULL,
}
LEVEL_FROM_PROTO = {v: k for k, v in LEVEL_TO_PROTO.items()}


def key_to_proto(key: KeyRecord) -> pb.Key:
    """The wire form of a key."""
    return pb.Key(
        key_id=key.key_id,
        public_key=key.public_key,
        state=_STATE[key.state],
        created_at=to_timestamp(key.created_at),
        retired_at=to_timestamp(key.retired_at),
        revocation_reason=key.revocation_reason,
    )


def identity_to_proto(identity: Identity) -> pb.Identity:
    """The wire form of an identity."""
    message = pb.Identity(
        domain_id=identity.domain_id, keys=[key_to_proto(k) for k in identity.keys]
    )
    if identity.current is not None:
        message.current_key.CopyFrom(key_to_proto(identity.current))
    return message


def cert_to_proto(cert: Certification, valid: bool) -> pb.Certification:
    """The wire form of a certification."""
    return pb.Certification(
        issuer=cert.issuer,
        subject=cert.subject,
        level=LEVEL_TO_PROTO[cert.level],
        issued_at=cert.issued_at,
        key_id=cert.key_id,
        signature=cert.signature,
        valid=valid,
    )


# Who the caller of a call is, for the claims on keys (None: the server does not
# authenticate callers).
ClaimantOf: TypeAlias = Callable[[Context], Claimant | None]


def authenticated_claimant(context: Context) -> Claimant | None:
    """The caller as the authentication layer established it: its principal, and the
    identity and bound signing key of the certificate it presented. None on an insecure
    server."""
    principal = current_principal()
    if principal is None:
        return None
    certificate = caller_certificate(context)
    if certificate is None or certificate.identity.kind not in ("component", "domain"):
        return Claimant(principal)
    return Claimant(principal, certificate.identity.name, certificate.signing_key)


class TrustServicer(pb_grpc.TrustServiceServicer):
    """Serves `grace.kernels.trust.v1.TrustService` over the core.

    Args:
        kernel: The core.
        claimant_of: Who the caller is, from the call context (tests stand in for the
            authentication layer here).
    """

    def __init__(
        self, kernel: TrustKernel, claimant_of: ClaimantOf = authenticated_claimant
    ) -> None:
        self._kernel = kernel
        self._claimant_of = claimant_of

    async def CreateChallenge(
        self, request: pb.CreateChallengeRequest, context: Context
    ) -> pb.CreateChallengeResponse:
        challenge, expires = self._kernel.create_challenge(request.domain_id)
        return pb.CreateChallengeResponse(challenge=challenge, expires_at=to_timestamp(expires))

    async def RegisterIdentity(
        self, request: pb.RegisterIdentityRequest, context: Context
    ) -> pb.RegisterIdentityResponse:
        identity, created = await self._kernel.register(
            request.domain_id,
            request.public_key,
            request.challenge,
            request.signature,
            claimant=self._claimant_of(context),
        )
        return pb.RegisterIdentityResponse(identity=identity_to_proto(identity), created=created)

    async def GetIdentity(
        self, request: pb.GetIdentityRequest, context: Context
    ) -> pb.GetIdentityResponse:
        return pb.GetIdentityResponse(
            identity=identity_to_proto(self._kernel.identity(request.domain_id))
        )

    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: Context
    ) -> pb.ListIdentitiesResponse:
        identities, token = self._kernel.list_identities(
            request.page_size,
            request.page_token,
            size_of=lambda identity: encoded_size(identity_to_proto(identity)),
        )
        return pb.ListIdentitiesResponse(
            identities=[identity_to_proto(i) for i in identities], next_page_token=token
        )

    async def RotateKey(
        self, request: pb.RotateKeyRequest, context: Context
    ) -> pb.RotateKeyResponse:
        identity = await self._kernel.rotate(
            request.domain_id,
            request.new_public_key,
            request.issued_at,
            request.old_key_signature,
            request.new_key_signature,
            claimant=self._claimant_of(context),
        )
        return pb.RotateKeyResponse(identity=identity_to_proto(identity))

    async def RevokeKey(
        self, request: pb.RevokeKeyRequest, context: Context
    ) -> pb.RevokeKeyResponse:
        identity = await self._kernel.revoke(
            request.domain_id,
            request.key_id,
            request.reason,
            request.issued_at,
            request.signature,
            request.signer_key_id,
        )
        return pb.RevokeKeyResponse(identity=identity_to_proto(identity))

    async def EstablishTrust(
        self, request: pb.EstablishTrustRequest, context: Context
    ) -> pb.EstablishTrustResponse:
        level = LEVEL_FROM_PROTO.get(request.level)
        if level is None:
            raise InvalidArgument("level", "must be TRUST_LEVEL_FULL, _PARTIAL or _NONE")
        cert, mutual = await self._kernel.establish(
            request.issuer, request.subject, level, request.issued_at, request.signature
        )
        return pb.EstablishTrustResponse(
            certification=cert_to_proto(cert, self._kernel.is_valid(cert)), mutual=mutual
        )

    async def ListCertifications(
        self, request: pb.ListCertificationsRequest, context: Context
    ) -> pb.ListCertificationsResponse:
        certs, token = self._kernel.list_certifications(
            request.issuer,
            request.subject,
            request.page_size,
            request.page_token,
            size_of=lambda cert: encoded_size(cert_to_proto(cert, self._kernel.is_valid(cert))),
        )
        return pb.ListCertificationsResponse(
            certifications=[cert_to_proto(c, self._kernel.is_valid(c)) for c in certs],
            next_page_token=token,
        )

    async def VerifyMessage(
        self, request: pb.VerifyMessageRequest, context: Context
    ) -> pb.VerifyMessageResponse:
        verdict = self._kernel.verify_message(
            request.domain_id,
            request.message,
            request.signature,
            request.asking_domain,
            request.max_depth,
        )
        return pb.VerifyMessageResponse(
            verified=verdict.verified,
            trusted=verdict.trusted,
            trust_path=verdict.path,
            path_level=(
                LEVEL_TO_PROTO[verdict.path_level]
                if verdict.path_level
                else pb.TRUST_LEVEL_UNSPECIFIED
            ),
            reason=verdict.reason,
            key_id=verdict.key_id,
        )

    async def GetTrustScore(
        self, request: pb.GetTrustScoreRequest, context: Context
    ) -> pb.GetTrustScoreResponse:
        score = await self._kernel.score(request.domain_id)
        return pb.GetTrustScoreResponse(
            domain_id=score.domain_id,
            score=score.score,
            components=[
                pb.ScoreComponent(
                    name=c.name,
                    value=c.value,
                    weight=c.weight,
                    available=c.available,
                    detail=c.detail,
                )
                for c in score.components
            ],
            computed_at=to_timestamp(score.computed_at),
        )
