"""The route table, built at start-up from the `google.api.http` rules of the descriptors.

Nothing here names a Grace method: `discover_services` finds every generated `*_pb2` module
under the `grace` package, and `RouteTable.from_services` turns each method's HttpRule (and
its `additional_bindings`) into routes. A service added to `protos/` appears in the gateway
once its generated module exists.

Upstream naming rule: a service's component is its proto package without the leading
`grace.`, without the trailing version (`v1`, `v2beta1`) and without a leading `kernels.`,
dots joined by `_`: `grace.registry.v1` -> `registry`, `grace.kernels.immune.v1` ->
`immune`. The component names the address variable (`GRACE_<COMPONENT>_ADDR`) and the default
port (`DEFAULT_PORTS`). The one exception is `grace.domain.v1` (`DomainService`), which every
domain serves: its calls go to the domain named by the request's `domain_id`, looked up in the
registry (see `gateway.upstreams`).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message

from gateway.template import PathTemplate, SegmentKind, TemplateError, parse_template, split_path

log = logging.getLogger(__name__)

DOMAIN_PACKAGE = "grace.domain.v1"
"""Proto package of the contract every domain serves; routed by `domain_id` via the registry."""

DOMAIN_ID_FIELD = "domain_id"

_VERSION = re.compile(r"v\d+([a-z]+\d*)?")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def component_for(package: str) -> str:
    """The component that serves a proto package (see the module docstring)."""
    parts = package.split(".")
    if parts and parts[0] == "grace":
        parts = parts[1:]
    if parts and _VERSION.fullmatch(parts[-1]):
        parts = parts[:-1]
    if len(parts) > 1 and parts[0] == "kernels":
        parts = parts[1:]
    return "_".join(parts)


def discover_services(package: str = "grace") -> list[_descriptor.ServiceDescriptor]:
    """Imports every generated `*_pb2` module under `package` and returns its services.

    `generated/grace` is a namespace package without `__init__` files, so the modules are
    found on disk under each entry of the package's `__path__`.
    """
    root = importlib.import_module(package)
    names: set[str] = set()
    for base in getattr(root, "__path__", []):
        base_path = Path(base)
        for file in base_path.rglob("*_pb2.py"):
            relative = file.relative_to(base_path).with_suffix("")
            names.add(".".join((package, *relative.parts)))
    services: list[_descriptor.ServiceDescriptor] = []
    for name in sorted(names):
        module = importlib.import_module(name)
        services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one gRPC method.

    Attributes:
        http_method: Upper-case HTTP method.
        template: The parsed path template.
        body: "" (no body), "*" (the whole request) or the name of the request field.
        response_body: "" (the whole response) or the name of the response field sent.
        method: The gRPC method.
        component: The upstream component (see `component_for`).
    """

    http_method: str
    template: PathTemplate
    body: str
    response_body: str
    method: _descriptor.MethodDescriptor
    component: str

    @property
    def grpc_path(self) -> str:
        """`/package.Service/Method`, the gRPC call path."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        """True for server-streaming methods (sent as SSE or NDJSON)."""
        return bool(self.method.server_streaming)

    @property
    def by_domain(self) -> bool:
        """True when the upstream is the domain named by the request's domain_id."""
        return self.method.containing_service.file.package == DOMAIN_PACKAGE

    @property
    def mutating(self) -> bool:
        """True for methods other than GET (the ones a governance check may gate)."""
        return self.http_method != "GET"

    @cached_property
    def request_class(self) -> type[Message]:
        """The request message class (looked up once per route, not per request)."""
        return message_factory.GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        """The response message class (looked up once per route)."""
        return message_factory.GetMessageClass(self.method.output_type)


@dataclass
class Match:
    """The result of looking up a request in the table.

    Exactly one of `route` (found) or `allowed` (the path exists under other methods: 405)
    is set; neither means 404.
    """

    route: Route | None = None
    bindings: dict[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()


def _rule_bindings(rule: http_pb2.HttpRule) -> Iterable[tuple[str, str, http_pb2.HttpRule]]:
    for binding in (rule, *rule.additional_bindings):
        kind = binding.WhichOneof("pattern")
        if kind is None:
            continue
        if kind == "custom":
            yield binding.custom.kind.upper(), binding.custom.path, binding
        else:
            yield kind.upper(), getattr(binding, kind), binding


def _check_field_path(
    message: _descriptor.Descriptor, path: str, where: str
) -> _descriptor.FieldDescriptor:
    current: _descriptor.Descriptor | None = message
    found: _descriptor.FieldDescriptor | None = None
    for name in path.split("."):
        if current is None:
            raise TemplateError(f"{where}: {path!r} goes through a non-message field")
        found = current.fields_by_name.get(name)
        if found is None:
            raise TemplateError(f"{where}: {current.full_name} has no field {name!r}")
        current = found.message_type
    assert found is not None
    return found


def _literal_at(route: Route, index: int) -> str | None:
    """The literal a route's paths must have as segment `index`, or None when any segment
    may be there (a variable or wildcard, no such segment, or a verb glued to it)."""
    template = route.template
    segments = template.segments
    if index >= len(segments) or segments[index].kind is not SegmentKind.LITERAL:
        return None
    if template.verb and index == len(segments) - 1:
        return None
    return segments[index].literal


def _first_literal(route: Route) -> str | None:
    """The literal a route's paths must start with, or None (see `_literal_at`)."""
    return _literal_at(route, 0)


class RouteTable:
    """Every route, searchable by method and raw path, most specific first."""

    def __init__(self, routes: Sequence[Route]) -> None:
        unique: dict[tuple[str, str], Route] = {}
        for route in routes:
            key = (route.http_method, route.template.openapi_path())
            if key in unique:
                log.warning(
                    "%s %s is bound by %s and %s; keeping the first",
                    *key,
                    unique[key].grpc_path,
                    route.grpc_path,
                )
                continue
            unique[key] = route
        self.routes: tuple[Route, ...] = tuple(
            sorted(unique.values(), key=lambda r: r.template.specificity, reverse=True)
        )
        # Candidates by a path's first segment, in the same order: a route whose template
        # starts with a literal can only match paths starting with it, so a request scans
        # its own prefix's routes and the few starting with a variable, not all of them.
        anywhere = tuple(r for r in self.routes if _first_literal(r) is None)
        self._by_first: dict[str, tuple[Route, ...]] = {
            literal: tuple(r for r in self.routes if _first_literal(r) in (None, literal))
            for literal in {_first_literal(r) for r in self.routes} - {None}
            if literal is not None
        }
        self._anywhere = anywhere
        # And by the first two segments: most routes share their first one (/domains/...).
        # For a path whose second segment no route names there, only the routes that take
        # any second segment remain.
        self._by_two: dict[tuple[str, str], tuple[Route, ...]] = {}
        self._by_first_any_second: dict[str, tuple[Route, ...]] = {}
        for first, routes in self._by_first.items():
            seconds = {_literal_at(r, 1) for r in routes} - {None}
            for second in seconds:
                assert second is not None
                self._by_two[(first, second)] = tuple(
                    r for r in routes if _literal_at(r, 1) in (None, second)
                )
            self._by_first_any_second[first] = tuple(r for r in routes if _literal_at(r, 1) is None)

    @classmethod
    def from_services(
        cls,
        services: Iterable[_descriptor.ServiceDescriptor],
        reserved: Iterable[tuple[str, str]] = (),
    ) -> RouteTable:
        """Builds the table from services' HttpRules.

        Args:
            services: The services to serve.
            reserved: (method, path) pairs the gateway serves itself; a rule binding one of
                them is skipped with a warning.

        Raises:
            TemplateError: A rule's template or field names are invalid.
        """
        taken = set(reserved)
        routes: list[Route] = []
        for service in services:
            component = component_for(service.file.package)
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                if method.client_streaming:
                    log.warning("%s: client streaming cannot be transcoded", method.full_name)
                    continue
                rule = options.Extensions[annotations_pb2.http]
                for http_method, path, binding in _rule_bindings(rule):
                    where = f"{method.full_name} {http_method} {path}"
                    template = parse_template(path)
                    if (http_method, template.openapi_path()) in taken:
                        log.warning("%s: path served by the gateway itself; skipped", where)
                        continue
                    for variable in template.variables:
                        _check_field_path(method.input_type, variable.field_path, where)
                    if binding.body not in ("", "*"):
                        _check_field_path(method.input_type, binding.body, where)
                    if binding.response_body:
                        _check_field_path(method.output_type, binding.response_body, where)
                    routes.append(
                        Route(
                            http_method,
                            template,
                            binding.body,
                            binding.response_body,
                            method,
                            component,
                        )
                    )
        return cls(routes)

    def match(self, http_method: str, raw_path: str) -> Match:
        """Finds the most specific route for a request (see `Match`)."""
        allowed: set[str] = set()
        if not raw_path.startswith("/"):
            return Match()
        parts = split_path(raw_path)
        if len(parts) > 1 and parts[0] in self._by_first:
            candidates = self._by_two.get((parts[0], parts[1]), self._by_first_any_second[parts[0]])
        else:
            candidates = self._by_first.get(parts[0], self._anywhere) if parts else self.routes
        for route in candidates:
            if route.http_method == http_method:
                bindings = route.template.match_parts(parts)
                if bindings is not None:
                    return Match(route=route, bindings=bindings)
        # No route of this method: the methods that do match the path make the 405. (Only
        # now, not on the way: a resource's routes share its path, and on the way each
        # request would match, and bind, the others too.)
        for route in candidates:
            if route.http_method != http_method and route.template.match_parts(parts) is not None:
                allowed.add(route.http_method)
        return Match(allowed=tuple(sorted(allowed)))

    def components(self) -> list[str]:
        """Upstream components with at least one route, domain-routed services excluded."""
        return sorted({r.component for r in self.routes if not r.by_domain})

    def services(self) -> list[_descriptor.ServiceDescriptor]:
        """The services with at least one route, in name order."""
        seen = {r.method.containing_service.full_name: r.method.containing_service for r in self}
        return [seen[name] for name in sorted(seen)]

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)
