"""Start-up checks: what Pushgate needs of Kamailio, from Kamailio's RPC answers."""

from __future__ import annotations

from pushgate.setup_check import KamailioFacts, problems

GOOD = KamailioFacts(protos=frozenset({"udp", "tcp"}))


def test_a_usable_kamailio_has_no_problem() -> None:
    assert problems(GOOD) == []


def test_missing_modules_are_named_with_the_fix() -> None:
    (problem,) = problems(KamailioFacts(missing_modules=("tsilo", "evapi")))
    assert "tsilo, evapi" in problem and "pushgate.cfg" in problem


def test_tcp_disabled_names_disable_tcp() -> None:
    (problem,) = problems(KamailioFacts(tcp_error="tcp support disabled"))
    assert "disable_tcp" in problem


def test_no_connection_listener_names_listen() -> None:
    (problem,) = problems(KamailioFacts(protos=frozenset({"udp"})))
    assert "listen=tcp" in problem


def test_tls_or_websocket_listeners_are_enough() -> None:
    for proto in ("tls", "ws", "wss"):
        assert problems(KamailioFacts(protos=frozenset({"udp", proto}))) == []


def test_usrloc_without_database_is_refused_unless_accepted() -> None:
    memory = "Command is not supported in db_mode=0"
    (problem,) = problems(KamailioFacts(protos=GOOD.protos, usrloc_db_error=memory))
    assert "db_mode" in problem and "PUSHGATE_USRLOC_MEMORY" in problem
    accepted = KamailioFacts(protos=GOOD.protos, usrloc_db_error=memory, memory_only_ok=True)
    assert problems(accepted) == []


def test_other_database_errors_are_not_a_memory_only_usrloc() -> None:
    assert problems(KamailioFacts(protos=GOOD.protos, usrloc_db_error="Failed to use table")) == []


def test_edge_mode_needs_a_secret_rr_and_path_and_no_outbound() -> None:
    found = problems(
        KamailioFacts(
            protos=frozenset({"tcp"}),
            edge_secret_missing=True,
            edge_missing_modules=("path",),
            edge_outbound_loaded=True,
        )
    )
    assert len(found) == 3
    assert any("PUSHGATE_EDGE_FLOW_SECRET" in p for p in found)
    assert any("path" in p and "loadmodule" in p for p in found)
    assert any("outbound" in p for p in found)
