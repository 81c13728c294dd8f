"""`grace approvals list|approve|reject` and `grace policies ...`: the governance kernel."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click
import grpc
import yaml
from google.protobuf import json_format

from grace.kernels.governance.v1 import governance_pb2, governance_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, common_options, session

PAGE_SIZE = 200
DEFAULT_LIST = 100
MAX_LIST = 10_000
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "all")
MODES = ("log_only", "enforce")
VERDICTS = ("allow", "deny", "pending_approval")

APPROVAL_COLUMNS = (
    Column("APPROVAL", path("approval_id")),
    Column("STATUS", path("status", "APPROVAL_STATUS_"), styled=True),
    Column("ACTOR", path("actor")),
    Column("ACTION", path("action")),
    Column("RESOURCE", path("resource")),
    Column("RISK", path("risk_level", "RISK_LEVEL_")),
    Column("POLICIES", path("policy_ids")),
    Column("DECIDED BY", path("decided_by")),
    Column("CREATED", path("created_at")),
)
POLICY_COLUMNS = (
    Column("POLICY", path("policy_id")),
    Column("EFFECT", path("effect", "EFFECT_"), styled=True),
    Column("MODE", path("mode", "MODE_")),
    Column("PRINCIPAL", path("principal")),
    Column("ACTION", path("action")),
    Column("RESOURCE", path("resource")),
    Column("MIN RISK", path("min_risk_level", "RISK_LEVEL_")),
    Column("VERSION", path("version")),
    Column("DESCRIPTION", path("description")),
)
DECISION_COLUMNS = (
    Column("DECISION", path("decision_id")),
    Column("TIME", path("time")),
    Column("VERDICT", path("verdict", "VERDICT_"), styled=True),
    Column("ACTOR", path("actor")),
    Column("ACTION", path("action")),
    Column("RESOURCE", path("resource")),
    Column("RISK", path("risk_level", "RISK_LEVEL_")),
    Column("POLICIES", path("policy_ids")),
)


def register(cli: click.Group) -> None:
    """Adds `grace approvals` and `grace policies`."""
    cli.add_command(approvals)
    cli.add_command(policies)


def _stub(chan: grpc.aio.Channel) -> governance_pb2_grpc.GovernanceServiceAsyncStub:
    return governance_pb2_grpc.GovernanceServiceStub(chan)


# ---- approvals ----------------------------------------------------------------------


@click.group()
def approvals() -> None:
    """Requests waiting for a person's approval."""


@approvals.command("list")
@click.option(
    "--status",
    type=click.Choice(APPROVAL_STATUSES),
    default="pending",
    show_default=True,
    help="Which approvals.",
)
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=DEFAULT_LIST, show_default=True)
@common_options
def list_approvals(status: str, limit: int) -> None:
    """List approval requests (pending ones by default)."""
    s = session()
    wanted = (
        governance_pb2.APPROVAL_STATUS_UNSPECIFIED
        if status == "all"
        else governance_pb2.ApprovalStatus.Value(f"APPROVAL_STATUS_{status.upper()}")
    )

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).ListApprovals(
                governance_pb2.ListApprovalsRequest(
                    status=wanted, page_size=min(PAGE_SIZE, limit - len(found)), page_token=token
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(a) for a in page.approvals)
            token = page.next_page_token
            if not token:
                break
        return found

    s.printer.items(s.call("governance", ask), APPROVAL_COLUMNS)


def _approver_option(function: Any) -> Any:
    return click.option(
        "--approver",
        default=None,
        help="Who decides, in an insecure Grace (default user:$USER). A secure Grace records "
        "the authenticated caller and refuses another name. Never the requesting actor.",
    )(function)


def _approver(given: str | None) -> str:
    """The approver to send: the one given; else none in a secure Grace (the server records
    the authenticated caller), the local user in an insecure one."""
    if given:
        return given
    return "" if session().security is not None else f"user:{getpass.getuser()}"


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", default="", help="Why (recorded with the decision).")
@_approver_option
@common_options
def approve(approval_id: str, reason: str, approver: str | None) -> None:
    """Approve a pending request (exit 4 when it was already decided)."""
    _decide(approval_id, _approver(approver), reason, approve=True)


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (recorded with the decision).")
@_approver_option
@common_options
def reject(approval_id: str, reason: str, approver: str | None) -> None:
    """Reject a pending request, with a reason."""
    _decide(approval_id, _approver(approver), reason, approve=False)


def _decide(approval_id: str, approver: str, reason: str, *, approve: bool) -> None:
    s = session()

    async def ask(chan: grpc.aio.Channel) -> governance_pb2.Approval:
        if approve:
            return (
                await _stub(chan).Approve(
                    governance_pb2.ApproveRequest(
                        approval_id=approval_id, approver=approver, reason=reason
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            ).approval
        return (
            await _stub(chan).Reject(
                governance_pb2.RejectRequest(
                    approval_id=approval_id, approver=approver, reason=reason
                ),
                timeout=CALL_TIMEOUT_S,
            )
        ).approval

    decided = to_data(s.call("governance", ask))
    if s.printer.is_table:
        verdict = str(decided.get("status", "")).removeprefix("APPROVAL_STATUS_")
        s.printer.line(f"{approval_id}: {verdict} by {decided.get('decided_by')}")
    else:
        s.printer.data(decided)


# ---- policies -----------------------------------------------------------------------


@click.group()
def policies() -> None:
    """Governance policies, the enforcement mode and recent decisions."""


@policies.command("list")
@common_options
def list_policies() -> None:
    """List every policy."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await _stub(chan).ListPolicies(
                governance_pb2.ListPoliciesRequest(page_size=PAGE_SIZE, page_token=token),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(p) for p in page.policies)
            token = page.next_page_token
            if not token:
                return found

    s.printer.items(s.call("governance", ask), POLICY_COLUMNS)


@policies.command("show")
@click.argument("policy_id")
@common_options
def show_policy(policy_id: str) -> None:
    """Show a policy with its conditions."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> governance_pb2.GetPolicyResponse:
        return await _stub(chan).GetPolicy(
            governance_pb2.GetPolicyRequest(policy_id=policy_id), timeout=CALL_TIMEOUT_S
        )

    s.printer.record(
        to_data(s.call("governance", ask).policy),
        [*POLICY_COLUMNS, Column("CONDITIONS", path("conditions"))],
    )


def _load_policy(file: str) -> governance_pb2.Policy:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {file}: {exc}", param_hint="FILE") from None
    if not isinstance(raw, dict):
        raise click.BadParameter("must hold one policy object", param_hint="FILE")
    policy = governance_pb2.Policy()
    try:
        json_format.ParseDict(raw.get("policy", raw), policy)
    except json_format.ParseError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None
    return policy


@policies.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@common_options
def create_policy(file: str) -> None:
    """Create a policy from FILE (JSON or YAML, the Policy message)."""
    s = session()
    policy = _load_policy(file)

    async def ask(chan: grpc.aio.Channel) -> governance_pb2.CreatePolicyResponse:
        return await _stub(chan).CreatePolicy(
            governance_pb2.CreatePolicyRequest(policy=policy), timeout=CALL_TIMEOUT_S
        )

    s.printer.record(to_data(s.call("governance", ask).policy), POLICY_COLUMNS)


@policies.command("update")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--expected-version",
    type=click.IntRange(0),
    default=0,
    help="Refuse the update unless the stored policy has this version (0: any).",
)
@common_options
def update_policy(file: str, expected_version: int) -> None:
    """Replace a policy with the one in FILE (same policy_id)."""
    s = session()
    policy = _load_policy(file)

    async def ask(chan: grpc.aio.Channel) -> governance_pb2.UpdatePolicyResponse:
        return await _stub(chan).UpdatePolicy(
            governance_pb2.UpdatePolicyRequest(policy=policy, expected_version=expected_version),
            timeout=CALL_TIMEOUT_S,
        )

    s.printer.record(to_data(s.call("governance", ask).policy), POLICY_COLUMNS)


@policies.command("delete")
@click.argument("policy_id")
@common_options
def delete_policy(policy_id: str) -> None:
    """Delete a policy."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> governance_pb2.DeletePolicyResponse:
        return await _stub(chan).DeletePolicy(
            governance_pb2.DeletePolicyRequest(policy_id=policy_id), timeout=CALL_TIMEOUT_S
        )

    result = to_data(s.call("governance", ask))
    if s.printer.is_table:
        s.printer.line(f"deleted {policy_id}")
    else:
        s.printer.data({"policy_id": policy_id, **result})


@policies.command("mode")
@click.argument("mode", required=False, type=click.Choice(MODES))
@common_options
def mode(mode: str | None) -> None:
    """Show the enforcement mode, or set it to MODE (log_only | enforce)."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> dict[str, Any]:
        stub = _stub(chan)
        if mode:
            await stub.SetMode(
                governance_pb2.SetModeRequest(
                    mode=governance_pb2.Mode.Value(f"MODE_{mode.upper()}")
                ),
                timeout=CALL_TIMEOUT_S,
            )
        return to_data(await stub.GetMode(governance_pb2.GetModeRequest(), timeout=CALL_TIMEOUT_S))

    current = s.call("governance", ask)
    if s.printer.is_table:
        s.printer.line(f"mode: {str(current.get('mode', '')).removeprefix('MODE_')}")
        s.printer.items(
            current.get("defaults", []),
            [
                Column("RISK", path("risk_level", "RISK_LEVEL_")),
                Column("DEFAULT EFFECT", path("effect", "EFFECT_"), styled=True),
            ],
        )
    else:
        s.printer.data(current)


@policies.command("decisions")
@click.option("--actor", default="", help="Only decisions about this actor.")
@click.option("--action", default="", help="Only decisions about this action.")
@click.option("--verdict", type=click.Choice(VERDICTS), help="Only decisions with this verdict.")
@click.option("--policy", "policy_id", default="", help="Only decisions this policy matched.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=DEFAULT_LIST, show_default=True)
@common_options
def decisions(actor: str, action: str, verdict: str | None, policy_id: str, limit: int) -> None:
    """List recent governance decisions, newest first."""
    s = session()
    wanted = (
        governance_pb2.Verdict.Value(f"VERDICT_{verdict.upper()}")
        if verdict
        else governance_pb2.VERDICT_UNSPECIFIED
    )

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).ListDecisions(
                governance_pb2.ListDecisionsRequest(
                    actor=actor,
                    action=action,
                    verdict=wanted,
                    policy_id=policy_id,
                    page_size=min(PAGE_SIZE, limit - len(found)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(d) for d in page.decisions)
            token = page.next_page_token
            if not token:
                break
        return found

    s.printer.items(s.call("governance", ask), DECISION_COLUMNS)
