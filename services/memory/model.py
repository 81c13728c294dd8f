"""What the shared memory stores and returns: contributions, verdicts, applications."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from services.memory.confidence import Evidence


class VerdictKind(enum.Enum):
    """A domain's judgement of a contribution."""

    VERIFIED = "verified"
    DISPUTED = "disputed"


class Outcome(enum.Enum):
    """Whether applying a contribution worked."""

    SUCCESS = "success"
    FAILURE = "failure"


class ChangeKind(enum.Enum):
    """What happened to a contribution; the value is the event type announced on the bus."""

    CONTRIBUTED = "memory.contributed"
    VERIFIED = "memory.verified"
    DISPUTED = "memory.disputed"
    APPLIED = "memory.applied"
    RETRACTED = "memory.retracted"


class ContributorOrder(enum.Enum):
    """How contributors are ranked."""

    COUNT = "count"
    MEAN_CONFIDENCE = "mean_confidence"


@dataclass(frozen=True)
class NewContribution:
    """A contribution as a client sends it (validated by the core).

    Attributes:
        initial_confidence: None means the service default.
        request_id: Empty means no idempotent retry.
    """

    domain_id: str
    contribution_type: str
    content: dict[str, Any]
    tags: tuple[str, ...] = ()
    initial_confidence: float | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Retraction:
    """The author's withdrawal of its contribution.

    Attributes:
        reason: Why the author withdrew it.
        time: When, epoch seconds.
        request_id: The client's id for the call that retracted it ("" if none).
    """

    reason: str
    time: float
    request_id: str = ""


@dataclass(frozen=True)
class Contribution:
    """One stored contribution with its evidence. Times are epoch seconds.

    Attributes:
        retraction: Set once the author retracted it; a retracted contribution is out of
            every search, list and statistic.
    """

    contribution_id: str
    domain_id: str
    contribution_type: str
    content: dict[str, Any]
    tags: tuple[str, ...]
    initial_confidence: float
    confidence: float
    evidence: Evidence
    created_at: float
    updated_at: float
    seq: int = field(default=0, compare=False)
    retraction: Retraction | None = None


@dataclass(frozen=True)
class Verdict:
    """One domain's current judgement of a contribution."""

    domain_id: str
    kind: VerdictKind
    reason: str
    time: float


@dataclass(frozen=True)
class Application:
    """One report that a domain applied a contribution."""

    application_id: str
    contribution_id: str
    domain_id: str
    outcome: Outcome
    detail: str
    time: float


@dataclass(frozen=True)
class Hit:
    """One search result: the contribution, its text relevance and its ranking score."""

    contribution: Contribution
    relevance: float
    score: float


@dataclass(frozen=True)
class SearchFilter:
    """A validated search.

    Attributes:
        terms: Distinct normalized words, all required.
        min_confidence: Lowest confidence returned.
        contribution_type: Empty means any.
        domain_id: Empty means any.
        tags: Every tag required.
    """

    terms: tuple[str, ...]
    min_confidence: float = 0.0
    contribution_type: str = ""
    domain_id: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contributor:
    """What one domain contributed."""

    domain_id: str
    contributions: int
    mean_confidence: float
    verifications: int
    successful_applications: int


@dataclass(frozen=True)
class Stats:
    """Totals over the whole memory."""

    total: int
    by_type: dict[str, int]
    by_domain: dict[str, int]
    verifications: int
    disputes: int
    successes: int
    failures: int
    mean_confidence: float
    retracted: int = 0


@dataclass(frozen=True)
class Change:
    """A committed change, for watchers and the bus.

    Attributes:
        actor: The domain that made the change.
        detail: Event-specific fields (verdict reason, application outcome...).
    """

    kind: ChangeKind
    contribution: Contribution
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)
