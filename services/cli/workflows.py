"""`grace workflow create|run|list|executions|show|watch|cancel|proof`: the orchestrator."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import click
import grpc
import yaml
from google.protobuf import json_format, struct_pb2
from rich.text import Text

from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.cli.output import Column, Printer, path, state_style, to_data
from services.cli.session import (
    CALL_TIMEOUT_S,
    Exit,
    Failure,
    Session,
    common_options,
    parse_json_object,
    rpc_failure,
    run_async,
    session,
)
from services.cli.streams import follow

PAGE_SIZE = 200
DEFAULT_LIST = 100
MAX_LIST = 10_000
_STATE = "EXECUTION_STATE_"
_STEP = "STEP_STATE_"
EXECUTION_PREFIX = "ex_"
TERMINAL = {
    orchestrator_pb2.EXECUTION_STATE_SUCCEEDED,
    orchestrator_pb2.EXECUTION_STATE_ROLLED_BACK,
    orchestrator_pb2.EXECUTION_STATE_COMPENSATION_FAILED,
}
STATES = ("running", "succeeded", "compensating", "rolled_back", "compensation_failed")

WORKFLOW_COLUMNS = (
    Column("WORKFLOW", path("workflow_id")),
    Column("NAME", path("name")),
    Column("STEPS", lambda w: len(w.get("steps", []))),
    Column("EXECUTIONS", path("execution_count")),
    Column("CREATED", path("created_at")),
)
EXECUTION_COLUMNS = (
    Column("EXECUTION", path("execution_id")),
    Column("WORKFLOW", path("workflow_name")),
    Column("STATE", path("state", _STATE), styled=True),
    Column(
        "STEPS",
        lambda e: (
            f"{sum(1 for s in e.get('steps', []) if s.get('state') == 'STEP_STATE_SUCCEEDED')}"
            f"/{len(e.get('steps', []))}"
        ),
    ),
    Column("CREATED", path("created_at")),
    Column("FINISHED", path("finished_at")),
    Column("ERROR", path("error")),
)
STEP_COLUMNS = (
    Column("STEP", path("step_id")),
    Column("STATE", path("state", _STEP), styled=True),
    Column("DOMAIN", path("domain_id")),
    Column("ACTION", path("action")),
    Column("ATTEMPTS", path("attempts")),
    Column("OUTPUT", path("output")),
    Column("ERROR", path("error")),
)
TRANSITION_COLUMNS = (
    Column("TRANSITION", path("transition"), width=24),
    Column("STATE", path("execution.state", _STATE), styled=True, width=12),
    Column(
        "STEPS",
        lambda r: " ".join(
            f"{s.get('step_id')}={str(s.get('state', '')).removeprefix(_STEP)}"
            for s in r.get("execution", {}).get("steps", [])
        ),
    ),
)


def register(cli: click.Group) -> None:
    """Adds `grace workflow`."""
    cli.add_command(workflow)


@click.group()
def workflow() -> None:
    """Workflows and their executions in the orchestrator."""


def _stub(chan: grpc.aio.Channel) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
    return orchestrator_pb2_grpc.OrchestratorServiceStub(chan)


def load_definition(file: str) -> orchestrator_pb2.CreateWorkflowRequest:
    """A workflow definition from a JSON or YAML file (`-` for stdin): name, steps, ..."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"neither JSON nor YAML: {exc}", param_hint="FILE") from None
    if not isinstance(raw, dict):
        raise click.BadParameter("must hold an object with name and steps", param_hint="FILE")
    request = orchestrator_pb2.CreateWorkflowRequest()
    try:
        json_format.ParseDict(raw, request)
    except json_format.ParseError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None
    return request


@workflow.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--request-id", default="", help="Idempotency key: the same key, the same workflow.")
@common_options
def create(file: str, request_id: str) -> None:
    """Create a workflow from FILE (JSON or YAML: name, description, steps)."""
    s = session()
    request = load_definition(file)
    if request_id:
        request.request_id = request_id

    async def ask(chan: grpc.aio.Channel) -> orchestrator_pb2.CreateWorkflowResponse:
        return await _stub(chan).CreateWorkflow(request, timeout=CALL_TIMEOUT_S)

    created = to_data(s.call("orchestrator", ask).workflow)
    if s.printer.is_table:
        s.printer.line(f"created workflow {created['workflow_id']} ({created['name']})")
    else:
        s.printer.data(created)


async def resolve_workflow(chan: grpc.aio.Channel, ref: str) -> orchestrator_pb2.Workflow:
    """A workflow by id, else by name (the newest of that name)."""
    stub = _stub(chan)
    try:
        found = await stub.GetWorkflow(
            orchestrator_pb2.GetWorkflowRequest(workflow_id=ref), timeout=CALL_TIMEOUT_S
        )
        return found.workflow
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
    named = await stub.ListWorkflows(
        orchestrator_pb2.ListWorkflowsRequest(name=ref, page_size=PAGE_SIZE),
        timeout=CALL_TIMEOUT_S,
    )
    if not named.workflows:
        raise Failure(f"no workflow has the id or name {ref!r}", Exit.NOT_FOUND)
    return max(named.workflows, key=lambda w: w.created_at.ToNanoseconds())


@workflow.command()
@click.argument("workflow_ref", metavar="WORKFLOW")
@click.option(
    "-i",
    "--input",
    "input_text",
    default="{}",
    metavar="JSON|@FILE",
    help="The execution's input: a JSON object, or @FILE (@- reads stdin).",
)
@click.option("--detach", is_flag=True, help="Start it and print its id; do not wait.")
@click.option("--request-id", default="", help="Idempotency key: the same key, one execution.")
@common_options
def run(workflow_ref: str, input_text: str, detach: bool, request_id: str) -> None:
    """Run WORKFLOW (an id or a name) and show its steps completing until it ends.

    Progress goes to stderr, the ended execution to stdout. Exit 0 when it SUCCEEDED,
    1 when it ended otherwise (rolled back, compensation failed).
    """
    s = session()
    payload = struct_pb2.Struct()
    payload.update(parse_json_object(input_text, "--input"))
    address = s.address("orchestrator")

    async def go() -> orchestrator_pb2.Execution:
        async with s.channel(address) as chan:
            found = await resolve_workflow(chan, workflow_ref)
            started = await _stub(chan).ExecuteWorkflow(
                orchestrator_pb2.ExecuteWorkflowRequest(
                    workflow_id=found.workflow_id, input=payload, request_id=request_id
                ),
                timeout=CALL_TIMEOUT_S,
            )
            s.printer.note(f"started {started.execution_id} of {found.name} ({found.workflow_id})")
            if detach:
                return started.execution
            return await _watch_progress(s, chan, started.execution_id)

    try:
        execution = run_async(go())
    except grpc.aio.AioRpcError as exc:
        raise rpc_failure("orchestrator", address, exc) from None
    _print_execution(s.printer, to_data(execution))
    if not detach and execution.state != orchestrator_pb2.EXECUTION_STATE_SUCCEEDED:
        raise click.exceptions.Exit(int(Exit.NOT_OK))


async def _watch_progress(
    s: Session, chan: grpc.aio.Channel, execution_id: str
) -> orchestrator_pb2.Execution:
    """Follows the execution to its end, a line on stderr per step that changes state."""
    seen: dict[str, int] = {}
    last: orchestrator_pb2.Execution | None = None
    status = s.printer.err.status(f"running {execution_id}") if s.printer.err.is_terminal else None
    if status is not None:
        status.start()
    try:
        async for update in _stub(chan).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id)
        ):
            last = update.execution
            for step in last.steps:
                if seen.get(step.step_id) != step.state:
                    seen[step.step_id] = step.state
                    if step.state != orchestrator_pb2.STEP_STATE_PENDING:
                        s.printer.note(_step_line(step))
            if status is not None:
                done = sum(
                    1 for x in last.steps if x.state == orchestrator_pb2.STEP_STATE_SUCCEEDED
                )
                status.update(f"running {execution_id}: {done}/{len(last.steps)} steps done")
            if last.state in TERMINAL:
                break
    finally:
        if status is not None:
            status.stop()
    if last is None:
        raise Failure(f"the orchestrator sent nothing about {execution_id}", Exit.SERVER_ERROR)
    state = orchestrator_pb2.ExecutionState.Name(last.state).removeprefix(_STATE)
    s.printer.note(Text.assemble("execution ", execution_id, ": ", (state, state_style(state))))
    return last


def _step_line(step: orchestrator_pb2.StepExecution) -> Text:
    state = orchestrator_pb2.StepState.Name(step.state).removeprefix(_STEP)
    mark = {"SUCCEEDED": "✓", "FAILED": "✗", "RUNNING": "…", "COMPENSATED": "↺"}.get(state, "·")
    line = Text.assemble(
        f"  {mark} ", (f"{step.step_id}", "bold"), " ", (state, state_style(state))
    )
    line.append(f"  {step.domain_id}.{step.action}")
    if step.attempts > 1:
        line.append(f" (attempt {step.attempts})")
    if step.error:
        line.append(f": {step.error}")
    return line


def _print_execution(printer: Printer, execution: Mapping[str, Any]) -> None:
    """An execution: a summary and a table of its steps (or the whole of it as data)."""
    if not printer.is_table:
        printer.data(dict(execution))
        return
    printer.record(
        execution,
        [
            Column("EXECUTION", path("execution_id")),
            Column("WORKFLOW", lambda e: f"{e.get('workflow_name')} ({e.get('workflow_id')})"),
            Column("STATE", path("state", _STATE), styled=True),
            Column("INPUT", path("input")),
            Column("OUTPUT", path("output")),
            Column("ERROR", path("error")),
            Column("COMPENSATED", path("compensation_order")),
            Column("CREATED", path("created_at")),
            Column("FINISHED", path("finished_at")),
        ],
    )
    printer.line("")
    printer.items(execution.get("steps", []), STEP_COLUMNS)


@workflow.command("list")
@click.option("--name", default="", help="Only workflows of this name.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=DEFAULT_LIST, show_default=True)
@common_options
def list_workflows(name: str, limit: int) -> None:
    """List workflow definitions."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).ListWorkflows(
                orchestrator_pb2.ListWorkflowsRequest(
                    name=name, page_size=min(PAGE_SIZE, limit - len(found)), page_token=token
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(w) for w in page.workflows)
            token = page.next_page_token
            if not token:
                break
        return found

    s.printer.items(s.call("orchestrator", ask), WORKFLOW_COLUMNS)


@workflow.command()
@click.option("--workflow", "workflow_id", default="", help="Only executions of this workflow.")
@click.option("--state", type=click.Choice(STATES), help="Only executions in this state.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=DEFAULT_LIST, show_default=True)
@common_options
def executions(workflow_id: str, state: str | None, limit: int) -> None:
    """List executions, newest first."""
    s = session()
    wanted = (
        orchestrator_pb2.ExecutionState.Value(_STATE + state.upper())
        if state
        else orchestrator_pb2.EXECUTION_STATE_UNSPECIFIED
    )

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).ListExecutions(
                orchestrator_pb2.ListExecutionsRequest(
                    workflow_id=workflow_id,
                    state=wanted,
                    page_size=min(PAGE_SIZE, limit - len(found)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(e) for e in page.executions)
            token = page.next_page_token
            if not token:
                break
        return found

    s.printer.items(s.call("orchestrator", ask), EXECUTION_COLUMNS)


@workflow.command()
@click.argument("ref", metavar="EXECUTION|WORKFLOW")
@common_options
def show(ref: str) -> None:
    """Show an execution (ex_...) with its steps, or a workflow by id or name."""
    s = session()
    if ref.startswith(EXECUTION_PREFIX):

        async def get_execution(chan: grpc.aio.Channel) -> orchestrator_pb2.GetExecutionResponse:
            return await _stub(chan).GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=ref), timeout=CALL_TIMEOUT_S
            )

        _print_execution(s.printer, to_data(s.call("orchestrator", get_execution).execution))
        return

    async def get_workflow(chan: grpc.aio.Channel) -> orchestrator_pb2.Workflow:
        return await resolve_workflow(chan, ref)

    found = to_data(s.call("orchestrator", get_workflow))
    if not s.printer.is_table:
        s.printer.data(found)
        return
    s.printer.record(found, [*WORKFLOW_COLUMNS, Column("DESCRIPTION", path("description"))])
    s.printer.line("")
    s.printer.items(
        found.get("steps", []),
        [
            Column("STEP", path("id")),
            Column("DOMAIN", path("domain_id")),
            Column("CAPABILITY", path("capability")),
            Column("ACTION", path("action")),
            Column("DEPENDS ON", path("depends_on")),
            Column("DATA", path("data")),
        ],
    )


@workflow.command()
@click.argument("execution_id")
@common_options
def watch(execution_id: str) -> None:
    """Print each transition of an execution until it ends; Ctrl-C stops."""
    s = session()

    async def items(chan: grpc.aio.Channel) -> AsyncIterator[dict[str, Any]]:
        async for update in _stub(chan).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id)
        ):
            yield to_data(update)

    follow(s, "orchestrator", items, TRANSITION_COLUMNS)


@workflow.command()
@click.argument("execution_id")
@click.option("--reason", default="", help="Why (kept with the execution).")
@common_options
def cancel(execution_id: str, reason: str) -> None:
    """Cancel a running execution (its completed steps are compensated)."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> orchestrator_pb2.CancelExecutionResponse:
        return await _stub(chan).CancelExecution(
            orchestrator_pb2.CancelExecutionRequest(execution_id=execution_id, reason=reason),
            timeout=CALL_TIMEOUT_S,
        )

    execution = to_data(s.call("orchestrator", ask).execution)
    if s.printer.is_table:
        state = str(execution.get("state", "")).removeprefix(_STATE)
        s.printer.line(f"cancel requested for {execution_id} (now {state})")
    else:
        s.printer.data(execution)


@workflow.command()
@click.argument("execution_id")
@click.option(
    "--verify",
    is_flag=True,
    help="Also check the proof here, offline (exit 1 when it does not verify).",
)
@common_options
def proof(execution_id: str, verify: bool) -> None:
    """Print the signed proof of an ended execution.

    The JSON output is what `grace verify-proof FILE` checks offline:
    `grace workflow proof EX -o json > proof.json`.
    """
    from services.orchestrator.proof import verify_proof

    s = session()

    async def ask(chan: grpc.aio.Channel) -> orchestrator_pb2.GetExecutionProofResponse:
        return await _stub(chan).GetExecutionProof(
            orchestrator_pb2.GetExecutionProofRequest(execution_id=execution_id),
            timeout=CALL_TIMEOUT_S,
        )

    response = s.call("orchestrator", ask)
    data = to_data(response)
    verdict = verify_proof(response.proof) if verify else None
    if s.printer.is_table:
        p = data["proof"]
        s.printer.record(
            p,
            [
                Column("EXECUTION", path("execution_id")),
                Column("WORKFLOW", path("workflow_id")),
                Column("FINAL STATE", path("final_state"), styled=True),
                Column("RECORDS", lambda x: len(x.get("records", []))),
                Column("HEAD HASH", path("head_hash")),
                Column("KEY", path("key_id")),
            ],
        )
        s.printer.line("")
        s.printer.items(
            p.get("records", []),
            [
                Column("#", path("index")),
                Column("STEP", path("step_id")),
                Column("KIND", path("kind")),
                Column("ATTEMPT", path("attempt")),
                Column("OUTCOME", path("outcome"), styled=True),
                Column("HASH", lambda r: str(r.get("hash", ""))[:16]),
            ],
        )
    elif verdict is not None:
        s.printer.data({**data, "verified": {"valid": verdict.valid, "reason": verdict.reason}})
    else:
        s.printer.data(data)
    if verdict is not None:
        if s.printer.is_table:
            s.printer.line(
                "\nproof: valid" if verdict.valid else f"\nproof: INVALID: {verdict.reason}"
            )
        if not verdict.valid:
            raise click.exceptions.Exit(int(Exit.NOT_OK))
