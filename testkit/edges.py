"""Several Pushgate edges (edge.cfg with WITH_CLUSTER, docs/edge.md) in front of one stock
Kamailio registrar (the upstream, Debian's default cfg on 127.0.0.1).

Edge i listens on 127.0.0.(i+2), all on the same SIP port, each with its own database
(its copy of the bindings) and its own pushd; the edges know each other through dmq.
Phones register through the edge they choose (``register(phone, node=edges.nodes[i])``);
callers call the upstream, which sends each call through the edge in the binding's Path.
"""

from __future__ import annotations

from pathlib import Path

from testkit.certs import TestPki
from testkit.cluster import Cluster, node_ips
from testkit.kamailio import Kamailio
from testkit.postgres import PostgresCluster
from testkit.stack import REPO, Stack


def edge_db(i: int) -> str:
    return "kamailio" if i == 0 else f"pushgate_edge{i}"


class Edges(Cluster):
    def __init__(
        self, root: Path, pg: PostgresCluster, pki: TestPki, *, size: int = 2, **kw: object
    ) -> None:
        Stack.__init__(self, root, pg, pki, flavour="edge", **kw)  # type: ignore[arg-type]
        first = self.kamailio
        ips = node_ips(size)
        self.nodes: list[Kamailio] = []
        for i in range(size):
            if i == 0:
                node = first
            else:
                node = Kamailio(
                    workdir=root / f"edge{i}",
                    db_url=pg.url_for(edge_db(i)),
                    hold_timeout=first.hold_timeout,
                    secret=first.secret,
                    version=first.version,
                    cfg=REPO / "edge.cfg",
                    cfg_defines=dict(first.cfg_defines or {}),
                )
                node.workdir.mkdir(parents=True, exist_ok=True)
            node.listen_ip = ips[i]
            node.sip_port = first.sip_port
            node.extra.update(
                {
                    "DBURL": f'"{node.db_url}"',
                    "RUNDIR": f'"{node.rundir}"',
                    "CTL_SOCKET": f'"{node.ctl}"',
                    "LISTEN_IP": ips[i],
                    "PUSHGATE_EVAPI_BIND": f'"127.0.0.1:{node.evapi_port}"',
                    "PUSHGATE_MSILO_PROXY": f'"sip:{ips[i]}:{node.sip_port}"',
                    "WITH_CLUSTER": "",
                    "CLUSTER_SELF": f'"sip:{ips[i]}:{node.sip_port}"',
                    "CLUSTER_NOTIFY": f'"sip:{ips[(i + 1) % size]}:{node.sip_port}"',
                    "CLUSTER_NODES": '"' + ",".join(ips) + '"',
                }
            )
            self.nodes.append(node)
        self.pushds = {}

    def start(self, *, pushd: bool = True) -> Edges:
        for i in range(1, len(self.nodes)):
            self.pg.create_database(edge_db(i))
            self.pg.psql("DELETE FROM location", db=edge_db(i))
        super().start(pushd=pushd)
        return self

    def edge_bindings(self, i: int) -> str:
        """The edge's own copy of the bindings (``ul.dump``)."""
        return self.ul_dump(i)
