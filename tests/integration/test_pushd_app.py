"""pushd assembled: in-process daemon, real providers against the fakes, and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from pushd import config as config_mod
from pushd.app import PushDaemon
from pushd.model import ProviderName, PushRequest, PushResult, Verdict
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread
from testkit.fake_fcm import FakeFcm
from tests.integration.fake_evapi import SECRET, TIMEOUT, FakeEvapi

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APNS_TOKEN = "c3" * 32
FCM_TOKEN = "fcm-token:APA91b" + "z" * 40


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(30):
            await coro

    asyncio.run(guarded())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fake_fcm() -> Any:
    with FakeFcm() as fake:
        yield fake


@pytest.fixture
def fake_apns(pki: TestPki) -> Any:
    with FakeApnsThread(pki) as fake:
        yield fake


def write_config(
    directory: Path,
    evapi_port: int,
    *,
    pki: TestPki | None = None,
    apns_port: int | None = None,
    fcm: FakeFcm | None = None,
    extra: str = "",
) -> Path:
    text = f"""
        kamailio:
          evapi: 127.0.0.1:{evapi_port}
          secret: {SECRET}
          reconnect_max_delay: 0.2
        retry: {{initial_delay: 0.01, max_delay: 0.05}}
        limits: {{shutdown_grace: 1}}
    """
    if pki is not None:
        text += f"""
        apns:
          key_file: {pki.apns_key}
          key_id: {pki.key_id}
          team_id: {pki.team_id}
          environment: sandbox
          host: localhost
          port: {apns_port or 9}
          ca_file: {pki.ca_cert}
          timeout: 3
        """
    if fcm is not None:
        account = fcm.make_service_account(directory, filename="sa.json")
        text += f"""
        fcm:
          service_account_file: {account.path.name}
          base_url: {fcm.url}
          timeout: 3
        """
    path = directory / "pushd.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    path.chmod(0o600)
    return path


def apns_push(push_id: str, kind: str = "call") -> dict[str, Any]:
    return {
        "type": "push",
        "id": push_id,
        "kind": kind,
        "provider": "apns",
        "prid": APNS_TOKEN,
        "param": "TEAMID1234.com.example.app.voip",
        "aor": "sip:alice@example.com",
        "ruid": "ruid-a",
        "deadline": time.time() + 10,
        "data": {"call_id": "call-" + push_id},
    }


def fcm_push(push_id: str, project: str = "pushgate-test") -> dict[str, Any]:
    return {
        "type": "push",
        "id": push_id,
        "kind": "call",
        "provider": "fcm",
        "prid": FCM_TOKEN,
        "param": project,
        "aor": "sip:bob@example.com",
        "ruid": "ruid-f",
        "deadline": time.time() + 10,
        "data": {"call_id": "call-" + push_id},
    }


async def results_for(server: FakeEvapi, *push_ids: str) -> dict[str, dict[str, Any]]:
    """The result for each of ``push_ids``, whatever order they come back in."""
    found: dict[str, dict[str, Any]] = {}
    while set(push_ids) - set(found):
        _, msg = await server.next()
        if msg.get("type") == "result":
            found[msg["id"]] = msg
    return found


async def result_for(server: FakeEvapi, push_id: str) -> dict[str, Any]:
    return (await results_for(server, push_id))[push_id]


class Recording:
    name = ProviderName.APNS

    def __init__(self) -> None:
        self.requests: list[PushRequest] = []
        self.closed = False

    async def send(self, request: PushRequest) -> PushResult:
        self.requests.append(request)
        return PushResult(verdict=Verdict.DELIVERED, status=200)

    async def close(self) -> None:
        self.closed = True


# -- in process -------------------------------------------------------------------------------


def test_daemon_in_process_with_a_given_provider(tmp_path: Path, pki: TestPki) -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        cfg = config_mod.load(write_config(tmp_path, server.port, pki=pki))
        provider = Recording()
        daemon = PushDaemon(cfg, providers={ProviderName.APNS: provider})
        await daemon.start()
        assert (
            daemon.ready_line() == f"pushd ready: providers=apns kamailio=127.0.0.1:{server.port}"
        )
        assert (await server.next())[1]["type"] == "hello"
        server.send(apns_push("p1"))
        result = await result_for(server, "p1")
        assert result["verdict"] == "delivered"
        # apns.environment: sandbox is the default for plain pn-provider=apns.
        assert provider.requests[0].environment == "sandbox"
        server.send(fcm_push("p2"))
        assert (await result_for(server, "p2"))["reason"] == "provider fcm not configured"
        await daemon.stop()
        assert provider.closed
        assert daemon.metrics.value("pushd_pushes_total", provider="apns", verdict="delivered") == 1
        await server.stop()

    run(scenario())


def test_real_providers_against_the_fakes(
    tmp_path: Path, pki: TestPki, fake_apns: Any, fake_fcm: FakeFcm
) -> None:
    fake_fcm.script(FCM_TOKEN + "-gone", 404, "UNREGISTERED")

    async def scenario() -> None:
        server = await FakeEvapi().start()
        path = write_config(tmp_path, server.port, pki=pki, apns_port=fake_apns.port, fcm=fake_fcm)
        daemon = PushDaemon(config_mod.load(path))
        await daemon.start()
        assert "providers=apns,fcm" in daemon.ready_line()
        await server.next()
        server.send(apns_push("a1"))
        server.send(apns_push("a2", kind="message"))
        server.send(fcm_push("f1"))
        server.send({**fcm_push("f2"), "prid": FCM_TOKEN + "-gone"})
        results = await results_for(server, "a1", "a2", "f1", "f2")
        await daemon.stop()
        await server.stop()
        assert results["a1"]["verdict"] == "delivered", results["a1"]
        assert results["a2"]["verdict"] == "delivered", results["a2"]
        assert results["f1"]["verdict"] == "delivered", results["f1"]
        assert results["f2"]["verdict"] == "delete_token"
        assert results["f2"]["ruid"] == "ruid-f"

    run(scenario())
    topics = sorted(p.topic or "" for p in fake_apns.pushes)
    assert topics == ["com.example.app", "com.example.app.voip"]
    assert len(fake_fcm.messages) == 2


# -- the CLI ----------------------------------------------------------------------------------


def pushd_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushd", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_config_ok(tmp_path: Path, pki: TestPki, fake_fcm: FakeFcm) -> None:
    path = write_config(tmp_path, 8448, pki=pki, fcm=fake_fcm)
    proc = pushd_cli("--check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config OK: kamailio=127.0.0.1:8448 apns=")
    assert "project=pushgate-test" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_check_config_error_names_the_key(tmp_path: Path, pki: TestPki) -> None:
    pki_copy = tmp_path / "AuthKey.p8"
    pki_copy.write_text("garbage")
    path = write_config(tmp_path, 8448, pki=pki)
    path.write_text(path.read_text().replace(str(pki.apns_key), str(pki_copy)))
    proc = pushd_cli("--check-config", str(path))
    assert proc.returncode == 2
    assert f"{path}: apns.key_file: " in proc.stderr


def test_cli_without_a_mode_is_a_usage_error() -> None:
    proc = pushd_cli()
    assert proc.returncode == 2 and "--check-config" in proc.stderr


def test_test_push_delivered_and_not(tmp_path: Path, fake_fcm: FakeFcm) -> None:
    path = write_config(tmp_path, 8448, fcm=fake_fcm)
    base = ("test-push", "--config", str(path), "--provider", "fcm", "--param", "pushgate-test")
    proc = pushd_cli(*base, "--prid", FCM_TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("verdict=delivered status=200 ")
    assert "ms=" in proc.stdout
    fake_fcm.script(FCM_TOKEN, 404, "UNREGISTERED")
    proc = pushd_cli(*base, "--prid", FCM_TOKEN, "--kind", "message")
    assert proc.returncode == 1
    assert "verdict=delete_token status=404 reason=UNREGISTERED" in proc.stdout
    proc = pushd_cli(*base[:4], "apns", "--param", "TEAMID1234.a.b", "--prid", "ab" * 32)
    assert proc.returncode == 1 and "apns not configured" in proc.stderr


def test_daemon_process_serves_and_stops_on_sigterm(tmp_path: Path, fake_fcm: FakeFcm) -> None:
    async def scenario() -> None:
        server = await FakeEvapi().start()
        path = write_config(tmp_path, server.port, fcm=fake_fcm)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pushd",
            "--config",
            str(path),
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stderr is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                while not any("pushd ready:" in line for line in lines):
                    line = (await proc.stderr.readline()).decode()
                    assert line, f"pushd exited early:\n{''.join(lines)}"
                    lines.append(line)
            ready = next(line for line in lines if "pushd ready:" in line)
            assert ready.strip() == f"pushd ready: providers=fcm kamailio=127.0.0.1:{server.port}"
            hello = (await server.next())[1]
            assert hello["type"] == "hello" and hello["secret"] == SECRET
            server.send(fcm_push("f1"))
            assert (await result_for(server, "f1"))["verdict"] == "delivered"
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT * 2):
                rest = (await proc.stderr.read()).decode()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        output = "".join(lines) + rest
        assert code == 0, output
        assert "pushd stopped" in output
        assert SECRET not in output
        assert FCM_TOKEN not in output  # tokens are shortened in logs
        await server.stop()

    run(scenario())
