"""Kamailio's own stock configs (Debian 5.6.3), unpatched, in the harness.

Each test runs for both flavours of testkit/stock.py: the default config
(/etc/kamailio/kamailio.cfg with WITH_AUTH, WITH_USRLOCDB, WITH_NAT) and the KEMI Python
example. They pin down the stock behaviour a Pushgate patch on top must leave alone.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit import stock
from testkit.certs import TestPki
from testkit.postgres import PostgresCluster
from testkit.procs import wait_until
from testkit.stack import DOMAIN, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("flavour", stock.FLAVOURS)]

MakeStack = Callable[..., Stack]
FOREIGN = "caller.example"


def headers(message: str, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip()
        for line in message.splitlines()
        if line.lower().startswith(prefix)
    ]


def first_lines(messages: list[str]) -> list[str]:
    return [m.splitlines()[0] for m in messages if m]


def final_statuses(messages: list[str]) -> list[int]:
    """Status codes of the final responses among ``messages``, in order."""
    return [
        int(line.split()[1])
        for line in first_lines(messages)
        if line.startswith("SIP/2.0 ") and not line.startswith("SIP/2.0 1")
    ]


def python_errors(stack: Stack) -> list[str]:
    """KEMI: exceptions in the Python routing script (the log says so for each one)."""
    log = stack.kamailio.log.read_text(errors="replace")
    return [line for line in log.splitlines() if "Unhandled exception in the Python" in line]


def local_edit(flavour: str, workdir: Path, before: str, after: str) -> Path:
    """A patch against the pristine stock cfg of ``flavour`` replacing ``before`` by ``after``."""
    name = stock.DEBIAN_CFG.name if flavour == "default" else stock.KEMI_CFG
    source = stock.DEBIAN_CFG if flavour == "default" else stock.KEMI_EXAMPLES / stock.KEMI_CFG
    (workdir / "a").mkdir(parents=True)
    (workdir / "b").mkdir()
    shutil.copyfile(source, workdir / "a" / name)
    text = source.read_text()
    assert before in text
    (workdir / "b" / name).write_text(text.replace(before, after, 1))
    diff = subprocess.run(
        ["diff", "-u", f"a/{name}", f"b/{name}"], cwd=workdir, capture_output=True, text=True
    )
    assert diff.returncode == 1, diff.stderr
    patch = workdir / "edit.patch"
    patch.write_text(diff.stdout)
    return patch


def test_stock_config_passes_the_check_with_only_site_settings(
    flavour: str, pg: PostgresCluster, pki: TestPki, tmp_path: Path
) -> None:
    stack = Stack(tmp_path / "stack", pg, pki, flavour=flavour)
    assert stack.stock is not None
    r = stack.kamailio.check()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "config file ok" in r.stderr
    assert f"udp: 127.0.0.1:{stack.kamailio.sip_port}" in r.stdout
    assert f"tcp: 127.0.0.1:{stack.kamailio.sip_port}" in r.stdout
    assert not stack.kamailio.evapi  # unpatched: no evapi to wait for
    # The stock files are Debian's own: byte for byte, or all but the KEMI site patch.
    workdir = stack.stock.workdir
    if flavour == "default":
        assert filecmp.cmp(workdir / "kamailio.cfg", stock.DEBIAN_CFG, shallow=False)
    else:
        assert filecmp.cmp(
            workdir / stock.KEMI_PY, stock.KEMI_EXAMPLES / stock.KEMI_PY, shallow=False
        )
        undone = tmp_path / "undone"
        shutil.copytree(workdir, undone)
        subprocess.run(
            ["patch", "-R", "-p1", "--batch", "-i", str(stock.SITE / "kemi-site.patch")],
            cwd=undone,
            check=True,
            capture_output=True,
        )
        assert filecmp.cmp(
            undone / stock.KEMI_CFG, stock.KEMI_EXAMPLES / stock.KEMI_CFG, shallow=False
        )


def test_patches_apply_to_the_pristine_stock_files_and_a_bad_one_fails_loudly(
    flavour: str, pg: PostgresCluster, pki: TestPki, tmp_path: Path
) -> None:
    anchor = 'loadmodule "acc.so"\n'
    good = local_edit(flavour, tmp_path / "good", anchor, anchor + 'loadmodule "uac.so"\n')
    stack = Stack(tmp_path / "stack", pg, pki, flavour=flavour, patches=[good])
    assert stack.stock is not None and stack.stock.loads("uac")
    r = stack.kamailio.check()
    assert r.returncode == 0, r.stderr[-3000:]

    # The same patch twice: the second one does not apply.
    with pytest.raises(RuntimeError, match=r"does not apply[\s\S]*(Reversed|FAILED|hunk)"):
        Stack(tmp_path / "stack2", pg, pki, flavour=flavour, patches=[good, good])


def test_register_without_credentials_is_challenged_and_stores_nothing(
    flavour: str, make_stack: MakeStack
) -> None:
    stack = make_stack(flavour=flavour, pushd=False)
    phone = stack.phone("alice")
    run = stack.register_without_credentials(phone)
    assert run.wait(10) == 0, run.output()[-3000:]
    assert run.final_response()[0] == 401
    challenge = run.received()[-1]
    (www,) = headers(challenge, "WWW-Authenticate")
    # The realm is the From domain ($fd), qop-less MD5 digest (auth_challenge flags 0).
    assert re.fullmatch(rf'Digest realm="{re.escape(DOMAIN)}", nonce="[^"]+"', www), www
    assert stack.bindings("alice") == []
    assert "AoR: alice" not in stack.kamailio.kamcmd("ul.dump")


def test_local_caller_without_credentials_is_challenged(
    flavour: str, make_stack: MakeStack
) -> None:
    """An INVITE whose From is a local user needs digest auth (407), even to a local user."""
    stack = make_stack(flavour=flavour, pushd=False)
    stack.phone("alice")
    caller = stack.call("alice", expect_answer=False, caller_domain=DOMAIN)
    assert caller.wait(10) == 0, caller.output()[-3000:]
    assert caller.final_response()[0] == 407
    (challenge,) = headers(caller.received()[-1], "Proxy-Authenticate")
    assert challenge.startswith(f'Digest realm="{DOMAIN}"')


def test_registered_phone_answers_a_call_from_a_foreign_domain(
    flavour: str, make_stack: MakeStack
) -> None:
    stack = make_stack(flavour=flavour, pushd=False)
    phone = stack.phone("alice")
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="alice")
    wait_until(lambda: len(stack.bindings("alice")) == 1, 10, "alice's binding")
    (contact,) = stack.bindings("alice")
    # Stored as sent: stock usrloc keeps the pn params in the Contact URI.
    assert f"pn-prid={phone.token}" in contact and ";ob" in contact
    acc_before = stack.pg.query("SELECT count(*) FROM acc")[0][0]

    caller = stack.call("alice", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97, live.output()[-3000:]
    # No challenge for a foreign caller calling a local user (uri==myself).
    statuses = first_lines(caller.received())
    assert not [s for s in statuses if " 401 " in s or " 407 " in s], statuses
    invites = [m for m in live.received() if m.startswith("INVITE ")]
    assert len(invites) == 1
    assert headers(invites[0], "From")[0].startswith(f'"Bob" <sip:bob@{FOREIGN}>')
    assert headers(invites[0], "Record-Route"), "stock record-routes INVITEs"
    # Accounting as stock: a log line for the INVITE; in the database too for the KEMI
    # example (it hard-defines WITH_ACCDB, with the extra columns of its header).
    log = stack.kamailio.log.read_text(errors="replace")
    assert re.search(rf"ACC: transaction answered: .*method=INVITE.*src_domain={FOREIGN}", log)
    if flavour == "kemi":
        rows = stack.pg.query(
            "SELECT method, sip_code, src_user, src_domain, dst_user FROM acc "
            "WHERE id > 0 ORDER BY id OFFSET %s",
            (acc_before,),
        )
        assert ("INVITE", "200", "bob", FOREIGN, "alice") in rows
        assert python_errors(stack) == []


def test_phone_without_push_params_is_called_while_its_connection_is_open(
    flavour: str, make_stack: MakeStack
) -> None:
    stack = make_stack(flavour=flavour, pushd=False)
    phone = stack.phone("bob")
    phone.push = False
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="bob")
    wait_until(lambda: len(stack.bindings("bob")) == 1, 10, "bob's binding")
    assert "pn-" not in stack.bindings("bob")[0]

    caller = stack.call("bob", expect_answer=True, caller_domain=FOREIGN)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    assert live.wait(15) == 97, live.output()[-3000:]

    # Its connection closed (the phone sleeps): the binding stays and a call fails at once,
    # Kamailio cannot reach the contact (stock has no push). The native script's t_relay()
    # answers 477 itself; after the KEMI one's, sl_reply_error() sends a 500 (stateless), and
    # the transaction t_relay() made may answer 477 as well (a second final response).
    stack.register_and_sleep(phone)
    assert len(stack.bindings("bob")) == 1
    started = time.monotonic()
    again = stack.call("bob", expect_answer=False, caller_domain=FOREIGN, label="asleep")
    assert again.wait(10) == 0, again.output()[-3000:]
    finals = final_statuses(again.received())
    if flavour == "default":
        assert set(finals) == {477}, finals
    else:
        assert finals[0] == 500 and set(finals) <= {500, 477}, finals
    assert time.monotonic() - started < 2
    assert stack.apns is not None and stack.apns.pushes == []


def test_call_to_a_natted_phone_is_not_delayed_by_the_missing_rtpproxy(
    flavour: str, make_stack: MakeStack
) -> None:
    """WITH_NAT: a private Contact is NAT; rtpproxy_manage() finds no rtpproxy and goes on."""
    stack = make_stack(flavour=flavour, pushd=False)
    phone = stack.phone("carol")
    phone.contact_host = "10.0.0.5:5060"
    live = stack.register(phone, keep_open_ms=15000, answer=True, label="carol")
    wait_until(lambda: len(stack.bindings("carol")) == 1, 10, "carol's binding")
    assert "Received: sip:127.0.0.1:" in stack.kamailio.kamcmd("ul.dump")  # fix_nated_register

    started = time.monotonic()
    caller = stack.call("carol", expect_answer=True, caller_domain=FOREIGN, talk_ms=0)
    assert caller.wait(20) == 0, caller.output()[-3000:]
    elapsed = time.monotonic() - started
    assert live.wait(15) == 97, live.output()[-3000:]
    log = stack.kamailio.log.read_text(errors="replace")
    assert "force_rtp_proxy(): no available proxies" in log  # the rtpproxy path was taken
    assert elapsed < 1.5, f"call took {elapsed:.2f} s"
