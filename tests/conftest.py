"""Shared fixtures: one PostgreSQL cluster per session, one test PKI, a stack per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from testkit.certs import TestPki, make_test_pki
from testkit.linphone import Linphone, PushStyle
from testkit.postgres import PostgresCluster, start_cluster
from testkit.stack import DOMAIN, Stack, world_readable_tempdir


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    root = world_readable_tempdir("pushgate-pg-")
    cluster = start_cluster(root / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def kamailio_version(request: pytest.FixtureRequest) -> str:
    """The Kamailio release a test's stacks run: 5.6 unless the test is parametrized with
    ``@on_kamailio(...)`` (e.g. ``on_kamailio("5.6", "6.0")``)."""
    return str(getattr(request, "param", "5.6"))


def on_kamailio(*versions: str) -> pytest.MarkDecorator:
    """Run the test once per Kamailio release (``make_stack`` uses it; id ``5.6``/``6.0``)."""
    return pytest.mark.parametrize("kamailio_version", versions, indirect=True)


@pytest.fixture
def make_stack(
    pg: PostgresCluster, pki: TestPki, tmp_path: Path, kamailio_version: str
) -> Iterator[Callable[..., Stack]]:
    """``make_stack(hold_timeout=..., pushd=True, defines={...})`` starts a stack (stopped after
    the test); ``defines`` override kamailio.cfg #!trydef values. ``flavour="default"`` or
    ``"kemi"`` runs one of Kamailio's stock configs instead, with ``patches`` applied.
    The stack runs the test's ``kamailio_version``."""
    stacks: list[Stack] = []

    def factory(
        *,
        hold_timeout: int = 30,
        pushd: bool = True,
        defines: dict[str, str] | None = None,
        refresh_interval: float | None = None,
        tls: bool = False,
        flavour: str = "allinone",
        patches: Sequence[Path] = (),
        stock_from: str | None = None,
        websocket: bool = False,
    ) -> Stack:
        stack = Stack(
            tmp_path / f"stack{len(stacks)}",
            pg,
            pki,
            hold_timeout=hold_timeout,
            defines=defines,
            refresh_interval=refresh_interval,
            tls=tls,
            flavour=flavour,
            patches=patches,
            kamailio=kamailio_version,
            stock_from=stock_from,
            websocket=websocket,
        )
        stacks.append(stack)
        stack.start(pushd=pushd)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


LINPHONE_PASSWORD = "secret1"
MakeLinphone = Callable[..., Linphone]


@pytest.fixture
def make_linphone(tmp_path: Path) -> Iterator[MakeLinphone]:
    """``make_linphone(stack, user, style, push_parameters)``; every linphonec is killed after."""
    made: list[Linphone] = []

    def factory(stack: Stack, user: str, style: PushStyle, push_parameters: str) -> Linphone:
        phone = Linphone(
            workdir=tmp_path / f"linphone-{user}",
            user=user,
            password=LINPHONE_PASSWORD,
            domain=DOMAIN,
            registrar_port=stack.kamailio.sip_port,
            instance=f"5e1f0000-0000-4000-8000-{len(made) + 1:012d}",
            push_style=style,
            push_parameters=push_parameters,
        )
        made.append(phone)
        return phone

    yield factory
    for phone in made:
        phone.stop()
