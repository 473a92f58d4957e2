"""Pushgate's Kamailio-side Python on the Python of Kamailio 6.0's Debian 13 (3.13).

The e2e tests run kemi/ inside both Kamailios (5.6: the host's Python 3.11, 6.0: its
root's 3.13). Here the unit tests of the modules Kamailio loads (pushgate/, kemi/compat.py,
standard library only) run on the root's own Python and pytest (Debian's python3-pytest),
in the root; the host's 3.11 runs them with the rest of tests/unit.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from testkit.kamailio import REPO, in_root, root_of

pytestmark = pytest.mark.e2e

KAMAILIO_SIDE_UNIT_TESTS = (
    "test_compat.py",
    "test_decision.py",
    "test_ksr_api.py",
    "test_pn_params.py",
    "test_registration.py",
    "test_setup_check.py",
    "test_wake_token.py",
    "test_wire_and_sipmsg.py",
)


def test_kamailio_side_unit_tests_pass_on_the_6_0_roots_python() -> None:
    root = root_of("6.0")
    assert root is not None
    script = (
        f"cd {REPO} && python3 --version && python3 -m pytest -q -p no:cacheprovider "
        "--noconftest " + " ".join(f"tests/unit/{name}" for name in KAMAILIO_SIDE_UNIT_TESTS)
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        in_root(root, ["/bin/sh", "-c", script], [REPO]),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert r.stdout.startswith("Python 3.13."), r.stdout[:200]
    assert " passed" in r.stdout and "skipped" not in r.stdout
