"""Who may call what: the one authorization table of Grace.

Every RPC's full method name maps to a `Rule`. The gRPC servers (through
`services.common.auth.Authorizer`) and the REST gateway (for the RPC a route maps to)
consult the same table, in memory, with no network round trip.

Principals come from a bearer token (people, tools, joining domains) or from a verified
client certificate (components `component:<name>`, joined domains `domain:<id>`).

Levels, from the weakest:

- PUBLIC: anyone, anonymous included (health only).
- READ: any authenticated principal: reader, operator, admin, components and domains.
- WRITE: use the platform (run workflows, acknowledge events): operator, admin,
  components and domains; not reader.
- OWNER: act as the domain named by a field of the request (its registry record,
  heartbeats, push subscriptions, contributions, published `source_domain`): that domain
  (`domain:<id>`), the component of that name, admin, or a component (platform code
  registers and relays on others' behalf; the registry then binds a record to its first
  owner, so no component moves a domain it did not register).
- OPERATE: Guardian control, policy changes, approvals, redelivery: operator, admin,
  components.
- COMPONENT: calls only platform code makes (policy evaluation on behalf of a caller,
  appending to the immutable log): components and admin.
- ADMIN: admin only (switching the governance mode).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ADMIN = "admin"
OPERATOR = "operator"
READER = "reader"
COMPONENT = "component"
DOMAIN_PREFIX = "domain:"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        name: `component:<name>` or `domain:<id>` for certificates; the token's principal
            (for example `alice`, or `domain:<id>` for a join token) for tokens.
        roles: admin, operator, reader, component, domain:<id>.
        method: "certificate" or "token".
    """

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    method: str = "token"

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def is_component(self) -> bool:
        return COMPONENT in self.roles

    @property
    def domains(self) -> frozenset[str]:
        """Domain ids this principal acts as."""
        return frozenset(r[len(DOMAIN_PREFIX) :] for r in self.roles if r.startswith(DOMAIN_PREFIX))

    def acts_as(self, domain_id: str) -> bool:
        """True when the principal is the domain (or component) `domain_id` itself."""
        return domain_id in self.domains or self.name == f"component:{domain_id}"

    def may_act_for(self, domain_id: str) -> bool:
        """True when the principal may act in `domain_id`'s name (OWNER level)."""
        return self.acts_as(domain_id) or self.is_admin or self.is_component


class Level(enum.IntEnum):
    """How much a call needs (see the module docstring)."""

    PUBLIC = 0
    READ = 1
    WRITE = 2
    OWNER = 3
    OPERATE = 4
    COMPONENT = 5
    ADMIN = 6


def _field(name: str) -> Callable[[Any], Iterable[str]]:
    def extract(request: Any) -> Iterable[str]:
        return (str(getattr(request, name)),)

    return extract


def _events_source(request: Any) -> Iterable[str]:
    return {str(event.source_domain) for event in request.events}


@dataclass(frozen=True)
class Rule:
    """What one RPC needs.

    Attributes:
        level: The level required.
        owned: For OWNER, returns the domain ids the request acts for.
        owned_fields: The request field(s) `owned` reads, for messages and docs.
    """

    level: Level
    owned: Callable[[Any], Iterable[str]] | None = None
    owned_fields: str = ""

    def check(self, principal: Principal | None, request: Any) -> str | None:
        """None when allowed; otherwise why not (for PERMISSION_DENIED/UNAUTHENTICATED)."""
        if self.level == Level.PUBLIC:
            return None
        if principal is None:
            return "unauthenticated"
        roles = principal.roles
        if self.level in (Level.READ,):
            return None
        if self.level == Level.WRITE:
            if roles & {ADMIN, OPERATOR, COMPONENT} or principal.domains:
                return None
            return "needs the operator or admin role, or a domain or component identity"
        if self.level == Level.OWNER:
            if self.owned is None or request is None:
                return None if roles & {ADMIN, COMPONENT} or principal.domains else "denied"
            refused = self.refuse_owned(principal, self.owned(request))
            if refused is not None:
                return refused
            if roles & {ADMIN, COMPONENT} or principal.domains:
                return None
            return "needs a domain identity or the admin role"
        if self.level == Level.OPERATE:
            if roles & {ADMIN, OPERATOR, COMPONENT}:
                return None
            return "needs the operator or admin role"
        if self.level == Level.COMPONENT:
            if roles & {ADMIN, COMPONENT}:
                return None
            return "only Grace components (or admin) may call this"
        if roles & {ADMIN}:
            return None
        return "needs the admin role"

    def refuse_owned(self, principal: Principal, domain_ids: Iterable[str]) -> str | None:
        """Why `principal` may not act for one of `domain_ids` (None when it may). Streaming
        calls are admitted before their first message, so their servicer asks this of
        each message's domains itself."""
        for domain_id in domain_ids:
            if domain_id and not principal.may_act_for(domain_id):
                return (
                    f"{self.owned_fields}={domain_id!r}: only that domain "
                    f"(domain:{domain_id}) may act in its name"
                )
        return None


PUBLIC = Rule(Level.PUBLIC)
READ = Rule(Level.READ)
WRITE = Rule(Level.WRITE)
OPERATE = Rule(Level.OPERATE)
COMPONENT_ONLY = Rule(Level.COMPONENT)
ADMIN_ONLY = Rule(Level.ADMIN)


def owner(field_name: str) -> Rule:
    """OWNER: the request's `field_name` names the domain the caller must act as."""
    return Rule(Level.OWNER, _field(field_name), field_name)


_REGISTRY = "/grace.registry.v1.RegistryService/"
_BUS = "/grace.eventbus.v1.EventBusService/"
_MEMORY = "/grace.memory.v1.SharedMemoryService/"
_ORCH = "/grace.orchestrator.v1.OrchestratorService/"
_GUARDIAN = "/grace.guardian.v1.GuardianService/"
_DOMAIN = "/grace.domain.v1.DomainService/"
_GOV = "/grace.kernels.governance.v1.GovernanceService/"
_IMMUNE = "/grace.kernels.immune.v1.ImmuneService/"
_LOG = "/grace.kernels.immutable_log.v1.ImmutableLogService/"
_TRUST = "/grace.kernels.trust.v1.TrustService/"
_LIBRARIAN = "/grace.kernels.librarian.v1.LibrarianService/"
_SCHEDULER = "/grace.kernels.scheduler.v1.SchedulerService/"
_TASKS = "/grace.kernels.tasks.v1.TasksService/"
_LEARNING = "/grace.kernels.learning.v1.LearningService/"
_TRIGGERS = "/grace.kernels.triggers.v1.TriggersService/"

# Every RPC of every Grace service. tests/common/test_access.py fails when one is missing.
RULES: Mapping[str, Rule] = {
    # Registry: a domain's record and heartbeats belong to that domain.
    _REGISTRY + "RegisterDomain": owner("domain_id"),
    _REGISTRY + "Heartbeat": owner("domain_id"),
    _REGISTRY + "DeregisterDomain": owner("domain_id"),
    _REGISTRY + "GetDomain": READ,
    _REGISTRY + "ListDomains": READ,
    _REGISTRY + "GetCapabilityMap": READ,
    _REGISTRY + "FindByCapability": READ,
    _REGISTRY + "WatchDomains": READ,
    _REGISTRY + "GetRegistryStats": READ,
    # Health federation: an observer reports in its own name; a suspect refutes for itself.
    _REGISTRY + "ReportSuspicion": owner("observer_id"),
    _REGISTRY + "Refute": owner("domain_id"),
    _REGISTRY + "ListSuspicions": READ,
    # Event bus: a publisher publishes as itself; push subscriptions belong to a domain.
    _BUS + "Publish": owner("source_domain"),
    _BUS + "PublishBatch": Rule(Level.OWNER, _events_source, "events[].source_domain"),
    # Checked when the stream opens (a domain, a component or admin) and then for every
    # event by the servicer (`refuse_owned`): one not the caller's to publish is rejected.
    _BUS + "PublishStream": Rule(Level.OWNER, _events_source, "events[].source_domain"),
    _BUS + "Subscribe": READ,
    _BUS + "Ack": WRITE,
    _BUS + "CreateSubscription": owner("domain_id"),
    _BUS + "DeleteSubscription": WRITE,
    _BUS + "ListSubscriptions": READ,
    _BUS + "GetHistory": READ,
    _BUS + "GetStats": READ,
    _BUS + "ListDeadLetters": READ,
    _BUS + "RedeliverDeadLetter": OPERATE,
    # Shared memory: contributions and their reviews are made in a domain's name.
    _MEMORY + "Contribute": owner("domain_id"),
    _MEMORY + "GetContribution": READ,
    _MEMORY + "Query": READ,
    _MEMORY + "Verify": owner("domain_id"),
    _MEMORY + "Dispute": owner("domain_id"),
    _MEMORY + "Apply": owner("domain_id"),
    _MEMORY + "Retract": owner("domain_id"),
    _MEMORY + "ListByDomain": READ,
    _MEMORY + "TopContributors": READ,
    _MEMORY + "GetStats": READ,
    _MEMORY + "WatchContributions": READ,
    # Orchestrator.
    _ORCH + "CreateWorkflow": WRITE,
    _ORCH + "GetWorkflow": READ,
    _ORCH + "ListWorkflows": READ,
    _ORCH + "ExecuteWorkflow": WRITE,
    _ORCH + "GetExecution": READ,
    _ORCH + "ListExecutions": READ,
    _ORCH + "CancelExecution": WRITE,
    _ORCH + "WatchExecution": READ,
    _ORCH + "GetExecutionProof": READ,
    _ORCH + "VerifyProof": READ,
    _ORCH + "GetStats": READ,
    _ORCH + "ListCompensationFailed": READ,
    _ORCH + "RetryCompensation": OPERATE,
    _ORCH + "AbandonCompensation": OPERATE,
    # Guardian: control is for operators.
    _GUARDIAN + "ListComponents": READ,
    _GUARDIAN + "GetComponent": READ,
    _GUARDIAN + "CheckComponents": READ,
    _GUARDIAN + "Heal": OPERATE,
    _GUARDIAN + "RestartComponent": OPERATE,
    _GUARDIAN + "StopComponent": OPERATE,
    _GUARDIAN + "StartComponent": OPERATE,
    _GUARDIAN + "WatchComponents": READ,
    _GUARDIAN + "GetSystemHealth": READ,
    # A domain (join token or current certificate) gets its certificate; Guardian checks
    # that the caller acts as exactly one domain.
    _GUARDIAN + "JoinDomain": WRITE,
    # A domain's own server: called by the orchestrator and the bus's push delivery.
    _DOMAIN + "Execute": OPERATE,
    _DOMAIN + "Compensate": OPERATE,
    _DOMAIN + "DeliverEvent": OPERATE,
    _DOMAIN + "DeliverEvents": OPERATE,
    _DOMAIN + "DescribeDomain": READ,
    # Members of the health federation probe each other (directly, or for another member).
    "/grace.domain.v1.PeerHealthService/Ping": READ,
    "/grace.domain.v1.PeerHealthService/ProbeOnBehalf": WRITE,
    # Governance: policies by operators, the mode by admins, evaluation by components
    # (which pass the authenticated caller as the actor).
    _GOV + "Evaluate": COMPONENT_ONLY,
    _GOV + "CreatePolicy": OPERATE,
    _GOV + "GetPolicy": READ,
    _GOV + "ListPolicies": READ,
    _GOV + "UpdatePolicy": OPERATE,
    _GOV + "DeletePolicy": OPERATE,
    _GOV + "GetMode": READ,
    _GOV + "SetMode": ADMIN_ONLY,
    _GOV + "GetDecision": READ,
    _GOV + "ListDecisions": READ,
    _GOV + "ListApprovals": READ,
    _GOV + "GetApproval": READ,
    _GOV + "Approve": OPERATE,
    _GOV + "Reject": OPERATE,
    _GOV + "WatchApproval": READ,
    _GOV + "GetGovernanceStats": READ,
    # Spending an approved decision: the gateway and Guardian, for the request it was for.
    _GOV + "RedeemDecision": COMPONENT_ONLY,
    # Immune.
    _IMMUNE + "ReportMetrics": WRITE,
    _IMMUNE + "ListAnomalies": READ,
    _IMMUNE + "GetAnomaly": READ,
    _IMMUNE + "ListRemediations": READ,
    _IMMUNE + "GetBaseline": READ,
    _IMMUNE + "GetImmuneStats": READ,
    _IMMUNE + "GetTelemetry": READ,
    _IMMUNE + "GetCollaborationGraph": READ,
    # Immutable log: only platform code appends.
    _LOG + "Append": COMPONENT_ONLY,
    _LOG + "AppendBatch": COMPONENT_ONLY,
    _LOG + "GetEntries": READ,
    _LOG + "GetCheckpoint": READ,
    _LOG + "GetInclusionProof": READ,
    _LOG + "GetConsistencyProof": READ,
    _LOG + "VerifyIntegrity": READ,
    # Trust: a key is registered, rotated and revoked by its own domain.
    _TRUST + "CreateChallenge": owner("domain_id"),
    _TRUST + "RegisterIdentity": owner("domain_id"),
    _TRUST + "GetIdentity": READ,
    _TRUST + "ListIdentities": READ,
    _TRUST + "RotateKey": owner("domain_id"),
    _TRUST + "RevokeKey": owner("domain_id"),
    _TRUST + "EstablishTrust": owner("issuer"),
    _TRUST + "ListCertifications": READ,
    _TRUST + "VerifyMessage": READ,
    _TRUST + "GetTrustScore": READ,
    # Librarian: indexing is using the platform; reading is reading.
    _LIBRARIAN + "Index": WRITE,
    _LIBRARIAN + "IndexBatch": WRITE,
    _LIBRARIAN + "DeleteDocument": WRITE,
    _LIBRARIAN + "GetDocument": READ,
    _LIBRARIAN + "Search": READ,
    _LIBRARIAN + "FindSimilar": READ,
    _LIBRARIAN + "GetLibrarianStats": READ,
    # Scheduler: a schedule acts later in its owner's name, so creating and driving one is
    # an operator's (or a component's) act; each firing is governed again.
    _SCHEDULER + "CreateSchedule": OPERATE,
    _SCHEDULER + "PauseSchedule": OPERATE,
    _SCHEDULER + "ResumeSchedule": OPERATE,
    _SCHEDULER + "TriggerSchedule": OPERATE,
    _SCHEDULER + "BackfillSchedule": OPERATE,
    _SCHEDULER + "DeleteSchedule": OPERATE,
    _SCHEDULER + "GetSchedule": READ,
    _SCHEDULER + "ListSchedules": READ,
    _SCHEDULER + "ListFirings": READ,
    _SCHEDULER + "GetSchedulerStats": READ,
    # Tasks (the operator loop): settling tasks is for operators; governance refuses the
    # requester as its own approver.
    _TASKS + "RunCycle": OPERATE,
    _TASKS + "ApproveTask": OPERATE,
    _TASKS + "RejectTask": OPERATE,
    _TASKS + "RetryTask": OPERATE,
    _TASKS + "ListCycles": READ,
    _TASKS + "GetCycle": READ,
    _TASKS + "ListTasks": READ,
    _TASKS + "GetTask": READ,
    _TASKS + "GetTasksStats": READ,
    # Learning: a domain reports its own action outcomes; analysing on demand is operating.
    _LEARNING + "IngestOutcomes": owner("domain_id"),
    _LEARNING + "ListPatterns": READ,
    _LEARNING + "GetPattern": READ,
    _LEARNING + "Analyze": OPERATE,
    _LEARNING + "GetLearningStats": READ,
    # Trigger mesh: rules act later in the platform's name, so they are an operator's.
    _TRIGGERS + "PutRule": OPERATE,
    _TRIGGERS + "DeleteRule": OPERATE,
    _TRIGGERS + "GetRule": READ,
    _TRIGGERS + "ListRules": READ,
    _TRIGGERS + "ListFirings": READ,
    _TRIGGERS + "GetFiring": READ,
}

# grpcio's own services: health is public; reflection needs an authenticated caller, so
# that anonymous callers reach health alone (grpcurl sends -H headers to reflection too).
SERVICE_RULES: Mapping[str, Rule] = {
    "/grpc.health.v1.Health/": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/": READ,
    "/grpc.reflection.v1.ServerReflection/": READ,
}


def rule_for(method: str) -> Rule | None:
    """The rule of a full method name (`/package.Service/Method`), or None if unknown."""
    rule = RULES.get(method)
    if rule is not None:
        return rule
    for prefix, service_rule in SERVICE_RULES.items():
        if method.startswith(prefix):
            return service_rule
    return None


HOW_TO_AUTHENTICATE = (
    "authenticate with 'authorization: Bearer <token>' (grace up writes an admin token to "
    "<data dir>/admin.token; create others with 'grace token create') or with a client "
    "certificate issued by the Grace CA"
)
