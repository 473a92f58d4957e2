"""Shared fixtures: one PostgreSQL cluster per session, one test PKI, a stack per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from testkit.certs import TestPki, make_test_pki
from testkit.postgres import PostgresCluster, start_cluster
from testkit.stack import Stack, world_readable_tempdir


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
def make_stack(pg: PostgresCluster, pki: TestPki, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``make_stack(hold_timeout=..., pushd=True, defines={...})`` starts a stack (stopped after
    the test); ``defines`` override kamailio.cfg #!trydef values. ``flavour="default"`` or
    ``"kemi"`` runs one of Kamailio's stock configs instead, with ``patches`` applied."""
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
        )
        stacks.append(stack)
        stack.start(pushd=pushd)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()
