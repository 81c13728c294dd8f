"""The one server bootstrap of every Grace gRPC server.

A service plugs in by subclassing `Service`: it adds its servicers to the server, opens
its storage and starts its background work (`Service.spawn`) in `start`, and flushes its
storage in `stop`; the background work is cancelled between the drain and `stop`.
`GraceServer` does the rest the same way for everyone: `grpc.aio` server with message
limits and `so_reuseport` off, health (NOT_SERVING until `start` returns, NOT_SERVING
again at shutdown), reflection, the tracing and error-translation interceptors, and
graceful shutdown on SIGTERM/SIGINT.

In secure mode (the default; `config.security` set) the server listens on TLS only with its
certificate from the Grace CA, re-read when renewed without a restart, requests (and the
`Authorizer` verifies) client certificates, authenticates bearer tokens, and checks every
call against the access table. The process's own client channels use the same certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import channels, completion, telemetry
from services.common.auth import Authenticator, Authorizer
from services.common.channels import SERVER_KEEPALIVE_OPTIONS, ClientSecurity
from services.common.config import ConfigError, SecurityConfig, ServerConfig, server_flag_parser
from services.common.data_dir import secure_data_dir
from services.common.errors import GraceError
from services.common.interceptors import ErrorTranslator
from services.common.reflection import enable_reflection
from services.common.telemetry import configure_logging
from services.common.tokens import TokenValidator
from services.common.upkeep import ProcessUpkeep

log = logging.getLogger(__name__)


class Service:
    """Base of every Grace service plugged into `GraceServer`.

    Subclasses override `add_to_server` and, as needed, the lifecycle hooks.

    Attributes:
        bound_port: The port the server actually bound, set before `start` runs (a service
            configured with port 0 learns its port here, for example to register it).
    """

    bound_port: int = 0
    # Full method names served while `start` runs (before SERVING), e.g. what the
    # components a supervisor boots call back during the boot.
    serves_while_starting: frozenset[str] = frozenset()
    _background: set[asyncio.Task[Any]] | None = None

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Runs `work` in the background for as long as the service runs.

        The task belongs to the service: `GraceServer` cancels it after the drain and waits
        for it before calling `stop`, so `stop` may close whatever the work used. A task
        that ends on its own with an error is logged when it ends, not hidden until (or
        raised at) shutdown.
        """
        if self._background is None:
            self._background = set()
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_ended)
        return task

    def _background_ended(self, task: asyncio.Task[Any]) -> None:
        if self._background is not None:
            self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_background(self) -> None:
        """Cancels every task `spawn` started and waits until they have ended."""
        tasks, self._background = self._background or set(), None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Adds the servicers; returns the full names of the services added."""
        raise NotImplementedError

    async def start(self) -> None:
        """Opens storage and starts background work; the service is SERVING after it."""

    async def begin_shutdown(self) -> None:
        """Called when shutdown begins, before the drain: end long-lived streams here."""

    async def stop(self) -> None:
        """Called after the drain, once the spawned tasks have ended: flush and close."""


class GraceServer:
    """Runs one `Service` on a `grpc.aio` server.

    Use as an async context manager in tests (`async with GraceServer(cfg, svc) as srv`),
    or `serve_forever` from `__main__`.
    """

    def __init__(self, config: ServerConfig, service: Service) -> None:
        self.config = config
        self.service = service
        self.port = 0
        self._ready = False
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        security = config.security
        auth: list[grpc.aio.ServerInterceptor] = []
        if security is not None:
            auth.append(Authorizer(authenticator(security)))
            if channels.configured() is None:
                # One server per process in production; its channels use its certificate.
                channels.configure(ClientSecurity.of_process(security))
        self._server = grpc.aio.server(
            interceptors=[
                *telemetry.current().server_interceptors(),
                ErrorTranslator(lambda: self._ready, service.serves_while_starting),
                *auth,
            ],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                *SERVER_KEEPALIVE_OPTIONS,
            ],
        )

    @property
    def address(self) -> str:
        """`host:port` the server listens on, ready to dial."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.port}"

    @property
    def service_names(self) -> tuple[str, ...]:
        """Full names of the services the service added (health and reflection aside)."""
        return tuple(self._service_names)

    async def start(self) -> None:
        """Binds, starts serving health (NOT_SERVING), starts the service, then SERVING."""
        self._service_names = list(self.service.add_to_server(self._server))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        enable_reflection(
            self._server,
            [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
        )
        try:
            if self.config.security is None:
                log.warning(
                    "%s: INSECURE mode: plaintext, no authentication, anyone who reaches "
                    "the port controls it",
                    self.config.service,
                )
                self.port = self._server.add_insecure_port(self.config.bind_address)
            else:
                self.port = self._server.add_secure_port(
                    self.config.bind_address, server_credentials(self.config.security)
                )
        except RuntimeError as exc:
            raise OSError(
                f"{self.config.service}: cannot bind {self.config.bind_address} "
                f"(is the port in use?): {exc}"
            ) from exc
        self.service.bound_port = self.port
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        try:
            await self.service.start()
        except BaseException:
            await self._server.stop(0)
            await self.service.cancel_background()
            raise
        self._ready = True
        # What start-up made (modules, descriptors, configuration, open stores) lives as
        # long as the process: move it out of the collector's generations (O(1)), so that
        # a full collection while serving scans only what serving made. Measured on the
        # event bus at 1,000 publishes/s, full collections otherwise stalled the loop for
        # tens of milliseconds, the slowest deliveries of a run.
        gc.freeze()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s", self.config.service, self.address)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, stop accepting calls, drain for the grace period, stop the service."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        log.info("%s shutting down (grace %.1fs)", self.config.service, grace)
        await self._health.enter_graceful_shutdown()
        await self.service.begin_shutdown()
        await self._server.stop(grace)
        self._ready = False
        # Changes whose callers went away during the drain still end before storage closes.
        await completion.drain()
        await self.service.cancel_background()
        await self.service.stop()
        log.info("%s stopped", self.config.service)

    async def serve_forever(self) -> None:
        """Serves until SIGTERM or SIGINT, then shuts down gracefully.

        A second signal during the drain cuts the grace period short. Beside serving, the
        process keeps its upkeep (`services.common.upkeep`): it stops when its supervisor is
        gone, hands freed memory back, and with GRACE_HEAP_PROFILE_DIR set writes a heap
        snapshot on SIGUSR1.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        signals_seen = 0

        def on_signal() -> None:
            nonlocal signals_seen
            signals_seen += 1
            stop_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        upkeep = ProcessUpkeep(self.config.env, self.config.service, stop_requested.set)
        upkeep.start()
        await self.start()
        await stop_requested.wait()
        upkeep.stop()
        stopping = asyncio.create_task(self.stop())
        while not stopping.done():
            before = signals_seen
            await asyncio.wait({stopping}, timeout=0.1)
            if signals_seen > before and not stopping.done():
                log.warning("second signal: stopping %s now", self.config.service)
                await self._server.stop(0)
        await stopping
        telemetry.current().shutdown()

    async def _set_all(self, status: int) -> None:
        await self._health.set("", status)
        for name in self._service_names:
            await self._health.set(name, status)

    async def __aenter__(self) -> GraceServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=0.5)


def authenticator(security: SecurityConfig) -> Authenticator:
    """Token and certificate validation from the configured files."""
    return Authenticator(TokenValidator(security.tokens_file, refresh_s=security.token_refresh_s))


class _ReloadingCertificate:
    """grpcio's certificate fetcher: a new configuration whenever the files changed.

    grpcio calls it for each new TLS handshake; it costs a `stat` of the certificate.
    """

    def __init__(self, security: SecurityConfig) -> None:
        self._security = security
        self._stamp: tuple[int, int] | None = None

    def _stamp_now(self) -> tuple[int, int]:
        stat = self._security.cert_file.stat()
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> grpc.ServerCertificateConfiguration:
        self._stamp = self._stamp_now()
        s = self._security
        return grpc.ssl_server_certificate_configuration(
            [(s.key_file.read_bytes(), s.cert_file.read_bytes())],
            root_certificates=s.ca_file.read_bytes(),
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            if self._stamp_now() == self._stamp:
                return None
            return self.load()
        except (OSError, ValueError):
            log.exception("cannot reload the TLS certificate; keeping the current one")
            return None


def server_credentials(security: SecurityConfig) -> grpc.ServerCredentials:
    """Mutual-TLS credentials that follow certificate renewals.

    A client certificate issued by the Grace CA is required and verified by grpcio during
    the handshake (grpcio has no "request but do not require" mode that would still
    verify). People's tools present a `client` certificate and a bearer token.
    """
    try:
        fetcher = _ReloadingCertificate(security)
        initial = fetcher.load()
    except OSError as exc:
        raise ConfigError(
            f"TLS: cannot read {exc.filename}: run under 'grace up' (which issues every "
            "component's certificate), set GRACE_TLS_CERT/GRACE_TLS_KEY/GRACE_CA_FILE, or "
            "set GRACE_INSECURE=true for plaintext"
        ) from None
    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetcher,  # type: ignore[arg-type]  # grpcio documents None as "keep the current one"
        require_client_authentication=True,
    )


def serve_main(
    service: str,
    build: Callable[[argparse.Namespace], tuple[ServerConfig, Service]],
    argv: Sequence[str] | None = None,
) -> int:
    """The body of every server's `__main__`: flags, logging, config, then serve.

    Args:
        service: Component name (names the flags' env variables and the messages).
        build: Makes the server config and the service from the parsed flags; raises
            ConfigError (or a GraceError, for a bad file it loads) on bad input.
        argv: Arguments without the program name; None reads sys.argv.

    Returns:
        0 after a graceful stop; 2 when the configuration is bad, with a message that
        names the variable or the file on stderr.
    """
    flags = server_flag_parser(service).parse_args(argv)
    configure_logging()
    try:
        config, instance = build(flags)
        return run(config, instance)
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
    except GraceError as exc:
        print(f"{service}: {exc.message}", file=sys.stderr)
    return 2


def run(config: ServerConfig, service: Service) -> int:
    """Runs a service until a signal stops it; the body of every `__main__`. Returns 0."""
    secure_data_dir(config.data_dir)
    telemetry.configure_tracing(config.service, config.env)

    async def serve() -> None:
        # The grpc.aio server binds to the running loop, so build it inside it.
        await GraceServer(config, service).serve_forever()

    asyncio.run(serve())
    return 0
