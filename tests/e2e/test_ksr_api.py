"""The stored lists of KEMI exports (tests/ksr_api/) are what each Kamailio release says.

A mismatch writes the running release's list next to the test's logs: copy it over the
stored one (after reading the difference: kemi/compat.py is where a change is handled).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from testkit.certs import TestPki
from testkit.cluster import Cluster
from testkit.ksr_api import LISTS, parse_api_list
from testkit.postgres import PostgresCluster
from tests.conftest import on_kamailio

pytestmark = pytest.mark.e2e


@on_kamailio("5.6", "6.0")
def test_stored_kemi_exports_are_the_running_kamailios(
    pg: PostgresCluster, pki: TestPki, tmp_path: Path, kamailio_version: str
) -> None:
    # kamailio.cfg with every module it may load: a cluster node's (WITH_CLUSTER) with
    # WebSocket (WITH_WEBSOCKET).
    stack = Cluster(tmp_path / "cluster", pg, pki, kamailio=kamailio_version, websocket=True)
    try:
        stack.start(pushd=False)
        running = parse_api_list(stack.kamailio.kamcmd("app_python.api_list"))
    finally:
        stack.stop()
    stored_file = LISTS / f"{kamailio_version}.txt"
    stored = [line for line in stored_file.read_text().splitlines() if not line.startswith("#")]
    if running != stored:
        fresh = stack.logs / f"ksr-api-{kamailio_version}.txt"
        fresh.write_text("\n".join(running) + "\n")
        diff = "\n".join(difflib.unified_diff(stored, running, "stored", "running", lineterm=""))
        pytest.fail(f"{stored_file} differs from Kamailio's exports ({fresh}):\n{diff}")
