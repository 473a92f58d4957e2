"""The pushd daemon assembled: providers + dispatcher + Kamailio link, and the CLI modes.

In-process use (tests, tools)::

    daemon = PushDaemon(config, providers={ProviderName.APNS: my_provider})
    await daemon.start()            # builds providers unless given, starts the link
    ...
    await daemon.stop()             # stop accepting, drain, flush results, close providers

``serve`` / ``check_config`` / ``send_test_push`` are what ``python -m pushd`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from collections.abc import Collection, Coroutine, Mapping
from typing import Any, TypeVar

from pushd import config as config_mod
from pushd import logs
from pushd.config import Config, ConfigError
from pushd.dispatch import BadPush, Dispatcher, RequestDefaults, build_request
from pushd.http_api import ApiHandler, HttpApi
from pushd.kamailio_link import KamailioLink
from pushd.metrics import Metrics
from pushd.model import Environment, Provider, ProviderName, PushKind, Verdict
from pushd.refresh import Refresher, SchemaTooOld, dsn_secrets, start_refresher
from pushgate import wire

log = logging.getLogger("pushd.app")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run pushd's event loop: uvloop (C, measured ~20 % more APNs pushes per CPU-second
    in bench/) when installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def build_providers(
    config: Config, only: Collection[ProviderName] | None = None
) -> dict[ProviderName, Provider]:
    """Construct the configured providers (inside the running loop: their clients bind to it).

    The provider modules are imported here, not at the top, so the rest of pushd (and its
    tests) loads without h2/google-auth/pywebpush being importable.
    """
    providers: dict[ProviderName, Provider] = {}
    if config.apns is not None and (only is None or ProviderName.APNS in only):
        from pushd.apns import ApnsProvider

        providers[ProviderName.APNS] = ApnsProvider(config.apns)
    if config.fcm is not None and (only is None or ProviderName.FCM in only):
        from pushd.fcm import FcmProvider

        providers[ProviderName.FCM] = FcmProvider(config.fcm)
    if config.webpush is not None and (only is None or ProviderName.WEBPUSH in only):
        from pushd.webpush import WebpushProvider

        providers[ProviderName.WEBPUSH] = WebpushProvider(config.webpush)
    return providers


def request_defaults(config: Config) -> RequestDefaults:
    env = config.apns.default_environment if config.apns else Environment.PRODUCTION
    return RequestDefaults(apns_environment=env)


class PushDaemon:
    """pushd in one object: start it inside a running loop, stop it when done."""

    def __init__(
        self, config: Config, *, providers: Mapping[ProviderName, Provider] | None = None
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self._given_providers = dict(providers) if providers is not None else None
        self.providers: dict[ProviderName, Provider] = {}
        k = config.kamailio
        self.link = KamailioLink(
            host=k.host,
            port=k.port,
            secret=k.secret.reveal,
            on_push=self._on_push,
            reconnect_max_delay=k.reconnect_max_delay,
            queue_size=config.limits.result_queue,
            metrics=self.metrics,
        )
        self.dispatcher: Dispatcher | None = None
        self.api: HttpApi | None = None
        self._link_task: asyncio.Task[None] | None = None
        self.refresher: Refresher | None = None

    async def start(self) -> None:
        """Build providers and start talking to Kamailio; returns once that is under way."""
        if self._given_providers is not None:
            self.providers = dict(self._given_providers)
        else:
            self.providers = build_providers(self.config)
        self.dispatcher = Dispatcher(
            self.providers,
            self.link.send_result,
            defaults=request_defaults(self.config),
            policy=self.config.retry,
            metrics=self.metrics,
            max_in_flight=self.config.limits.max_in_flight,
        )
        # Before the link: a refresher that cannot run stops pushd before it takes pushes.
        self.refresher = await start_refresher(
            self.config, self.dispatcher.submit, self.link.send_result
        )
        self._link_task = asyncio.create_task(self.link.run(), name="kamailio-link")
        await self._start_api(self.dispatcher)

    async def _start_api(self, dispatcher: Dispatcher) -> None:
        api = self.config.api
        if api is None or api.token is None:
            # No token, no API: an open push endpoint would let any local user page phones.
            log.info("HTTP API off: no api.token in the config")
            return
        handler = ApiHandler(
            token=api.token,
            submit=dispatcher.submit,
            providers=lambda: tuple(self.providers),
            defaults=request_defaults(self.config),
            kamailio_connected=lambda: self.link.authenticated,
            metrics=self.metrics.render,
        )
        self.api = HttpApi(handler, api.host, api.port)
        try:
            await self.api.start()
        except OSError:
            await self.stop()  # the link and providers are already up
            raise

    def ready_line(self) -> str:
        names = ",".join(p.value for p in self.providers)
        return f"pushd ready: providers={names} kamailio={self.config.kamailio.evapi}"

    async def wait(self, stop: asyncio.Event) -> bool:
        """Until ``stop`` is set (True) or the link dies (False: a bug, it runs forever)."""
        assert self._link_task is not None
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_task, self._link_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if not self._link_task.done():
            return True
        exc = None if self._link_task.cancelled() else self._link_task.exception()
        log.error("kamailio link ended unexpectedly", exc_info=exc)
        return False

    async def stop(self) -> None:
        """Graceful stop: refuse new pushes, let in-flight ones finish briefly, flush, close."""
        grace = self.config.limits.shutdown_grace
        if self.refresher is not None:
            await self.refresher.stop()
        if self.api is not None:
            await self.api.stop_listening()
        if self.dispatcher is not None:
            self.dispatcher.stop_accepting()
            if not await self.dispatcher.drain(grace):
                log.warning(
                    "%d pushes still running after %.1fs; cancelling them",
                    self.dispatcher.in_flight,
                    grace,
                )
                await self.dispatcher.cancel_all()
        if self.api is not None:
            # Every API push has its verdict by now; this lets the answers go out.
            await self.api.stop()
        await self.link.close(flush_timeout=1.0)
        if self._link_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._link_task
        for name, provider in self.providers.items():
            try:
                await provider.close()
            except Exception:
                log.exception("closing the %s provider failed", name)
        log.info("pushd stopped")

    def _on_push(self, msg: dict[str, Any]) -> None:
        if self.dispatcher is None:  # cannot happen: the link starts after the dispatcher
            return
        self.dispatcher.submit(msg)


# -- CLI modes ---------------------------------------------------------------------------


def _load(path: str) -> Config | None:
    try:
        return config_mod.load(path, check_files=True)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def _secrets(config: Config) -> list[str]:
    out = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        out.append(config.kamailio.secret.reveal())
    if config.api is not None and config.api.token is not None:
        out.append(config.api.token.reveal())
    if config.refresh is not None:
        out.extend(dsn_secrets(config.refresh.database))
    return out


def check_config(path: str) -> int:
    """``--check-config``: parse everything, open every credential file, send nothing."""
    logs.setup("warning")
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    print(f"config OK: {config.summary()}")
    return EXIT_OK


def serve(path: str) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    logs.setup("info")  # until the config says otherwise; config warnings need a handler
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    logs.setup(config.log.level, config.log.format, secrets=_secrets(config))
    return run_loop(_serve(config))


async def _serve(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = PushDaemon(config)
    try:
        await daemon.start()
    except SchemaTooOld as exc:  # the operator's to fix: no traceback
        log.error("cannot start: %s", exc)
        await daemon.stop()
        return EXIT_FAILED
    except Exception as exc:
        log.exception("cannot start: %s", exc)
        return EXIT_FAILED
    log.info("config %s: %s", config.path, config.summary())
    # A plain line whatever the log level/format: harnesses wait for it.
    print(daemon.ready_line(), file=sys.stderr, flush=True)
    clean = await daemon.wait(stop)
    log.info("stopping")
    await daemon.stop()
    return EXIT_OK if clean else EXIT_FAILED


def send_test_push(
    path: str, provider: str, prid: str, param: str, kind: str = PushKind.CALL.value
) -> int:
    """``test-push``: one attempt through the real provider code; 0 only when delivered."""
    logs.setup("info")
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    logs.setup(config.log.level, config.log.format, secrets=_secrets(config))
    return run_loop(_test_push(config, provider, prid, param, kind))


async def _test_push(config: Config, provider: str, prid: str, param: str, kind: str) -> int:
    msg = {
        **wire.Push(
            id=f"test-push-{uuid.uuid4().hex[:8]}",
            kind=PushKind.CALL,
            provider=provider,
            prid=prid,
            param=param,
            deadline=time.time() + 30.0,
            data={"call_id": f"pushd-test-{uuid.uuid4().hex[:12]}", "caller": "sip:pushd@test"},
        ).message(),
        "kind": kind,  # as typed on the command line: build_request names a wrong one
    }
    try:
        request = build_request(msg, request_defaults(config))
    except BadPush as exc:
        print(f"bad push: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if request.provider not in config.providers:
        print(f"provider {request.provider} not configured in {config.path}", file=sys.stderr)
        return EXIT_FAILED
    providers = build_providers(config, only=(request.provider,))
    impl = providers[request.provider]
    print(
        f"sending {request.kind} push via {request.provider} ({request.environment}) "
        f"topic={request.topic} token={logs.short_token(request.token)}",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(request.deadline - time.time()):
            result = await impl.send(request)
    except TimeoutError:
        print("verdict=give_up status=- reason=timeout")
        return EXIT_FAILED
    finally:
        await impl.close()
    ms = (time.monotonic() - started) * 1000
    print(
        f"verdict={result.verdict} status={result.status or '-'} "
        f"reason={result.reason or '-'} ms={ms:.1f} id={result.provider_id or '-'}"
    )
    return EXIT_OK if result.verdict == Verdict.DELIVERED else EXIT_FAILED
