"""pushgate.cluster: the Path a node adds, whose binding is whose, dmq_usrloc messages."""

from __future__ import annotations

import json

import pytest

from pushgate import cluster
from pushgate.cluster import ClusterError, Node, Replicated

NOW = 1_800_000_000.0


def test_path_header_is_the_path_modules_form() -> None:
    node = Node.from_uri("sip:127.0.0.2:5070")
    assert node.path_header("198.51.100.7:40123", "TCP") == (
        "<sip:127.0.0.2:5070;transport=tcp;lr;received=sip:198.51.100.7:40123%3Btransport%3Dtcp>"
    )


def test_ipv6_source_keeps_its_brackets() -> None:
    header = Node.from_uri("sip:[2001:db8::1]:5060").path_header("[2001:db8::9]:5999", "tls")
    assert header == (
        "<sip:[2001:db8::1]:5060;transport=tcp;lr;received=sip:[2001:db8::9]:5999%3Btransport%3Dtls>"
    )


@pytest.mark.parametrize(
    ("uri", "hostport"),
    [
        ("sip:127.0.0.2", "127.0.0.2:5060"),
        ("sip:Node-A.example:5080;transport=udp", "node-a.example:5080"),
        ("<sip:token@127.0.0.3:5060;lr>", "127.0.0.3:5060"),
        ("sips:[::1]:5061", "[::1]:5061"),
        ("tel:+123", ""),
        ("sip:", ""),
    ],
)
def test_hostport_of(uri: str, hostport: str) -> None:
    assert cluster.hostport_of(uri) == hostport


def test_node_needs_a_sip_uri() -> None:
    with pytest.raises(ClusterError, match="not a SIP URI"):
        Node.from_uri("127.0.0.2:5060")


def test_a_binding_is_the_node_of_its_first_path_hop() -> None:
    a, b = Node("127.0.0.2:5060"), Node("127.0.0.3:5060")
    path = "<sip:127.0.0.2:5060;lr;received=sip:1.2.3.4:5%3Btransport%3Dtcp>,<sip:edge.example;lr>"
    assert a.owns(path) and not b.owns(path)
    # Registered without a cluster (no Path): the node's own, as on a single Kamailio.
    assert a.owns("") and b.owns("")
    # Default port: 5060.
    assert a.owns("<sip:127.0.0.2;lr>")


def test_nodes_of() -> None:
    assert cluster.nodes_of(" 127.0.0.2, 127.0.0.3,,") == {"127.0.0.2", "127.0.0.3"}


def contact(
    action: int = 1, modified: float = NOW - 1, aor: str = "alice@pushgate.test"
) -> dict[str, object]:
    return {
        "action": action,
        "aor": aor,
        "ruid": "uloc-1",
        "last_modified": int(modified),
        "received": "sip:198.51.100.7:40123;transport=tcp",
        "path": "<sip:127.0.0.2:5060;lr;received=sip:198.51.100.7:40123%3Btransport%3Dtcp>",
    }


def test_fresh_update_is_a_wake_up_with_its_flow() -> None:
    assert cluster.updates(json.dumps(contact()), NOW) == [
        Replicated(
            "alice@pushgate.test",
            "uloc-1",
            "<sip:127.0.0.2:5060;lr;received=sip:198.51.100.7:40123%3Btransport%3Dtcp>",
        )
    ]


def test_without_path_the_flow_is_received() -> None:
    item = {**contact(), "path": ""}
    assert cluster.updates(json.dumps(item), NOW)[0].flow == "sip:198.51.100.7:40123;transport=tcp"


def test_sync_replay_deletion_and_junk_are_not() -> None:
    old = json.dumps(contact(modified=NOW - 600))
    deleted = json.dumps(contact(action=2))
    assert cluster.updates(old, NOW) == []
    assert cluster.updates(deleted, NOW) == []
    assert cluster.updates("not json", NOW) == []
    assert cluster.updates("[1, 2]", NOW) == []
    assert cluster.updates(json.dumps({"action": 1, "aor": 5, "last_modified": NOW}), NOW) == []


def test_batched_contacts() -> None:
    body = json.dumps(
        {"multi": [contact(), contact(aor="bob@x", modified=NOW - 600), contact(aor="carol@x")]}
    )
    assert [u.aor for u in cluster.updates(body, NOW)] == ["alice@pushgate.test", "carol@x"]
