"""Several Pushgate Kamailio nodes on loopback (docs/cluster.md): the all-in-one config
(WITH_CLUSTER), or a stock config of Kamailio's with Pushgate's patch (flavour "default"
or "kemi", pushgate.cfg's WITH_PUSHGATE_CLUSTER).

Node i listens on 127.0.0.(i+2), all on the same SIP port, one shared PostgreSQL, dmq +
dmq_usrloc between them; each node has its own pushd (one pushd per node: a push request
goes to the pushd of the node that holds the call, and its result comes back there).
Phones and callers stay on 127.0.0.1 and pick a node per REGISTER / call.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from testkit.certs import TestPki
from testkit.kamailio import Kamailio
from testkit.postgres import PostgresCluster
from testkit.procs import stop, wait_until
from testkit.stack import Stack


def node_ips(size: int) -> list[str]:
    return [f"127.0.0.{i + 2}" for i in range(size)]


def make_node(node: Kamailio, ips: list[str], i: int, port: int, *, dropin: bool = False) -> None:
    """Make ``node`` the cluster's node ``i`` of ``ips``: its address, port and defines
    (``dropin``: Kamailio's default cfg with Pushgate's patch, pushgate.cfg's switch)."""
    node.listen_ip = ips[i]
    node.sip_port = port
    node.extra.update(
        {
            "CLUSTER_SELF": f'"sip:{ips[i]}:{port}"',
            "CLUSTER_NOTIFY": f'"sip:{ips[(i + 1) % len(ips)]}:{port}"',
            "CLUSTER_NODES": '"' + ",".join(ips) + '"',
        }
    )
    if dropin:
        node.extra.update({"WITH_PUSHGATE_CLUSTER": "", "CLUSTER_SOURCE_IP": ips[i]})
    else:
        node.extra["WITH_CLUSTER"] = ""


class Cluster(Stack):
    def __init__(
        self, root: Path, pg: PostgresCluster, pki: TestPki, *, size: int = 2, **kw: object
    ) -> None:
        super().__init__(root, pg, pki, **kw)  # type: ignore[arg-type]
        first = self.kamailio
        ips = node_ips(size)
        # The drop-in shape (a stock config of Kamailio's + Pushgate's patch): each node's
        # own copy, prepared for its address.
        dropin = self.stock is not None
        files_of = str(kw.get("stock_from") or kw.get("kamailio") or "5.6")
        patches = cast("Sequence[Path]", kw.get("patches") or ())
        if dropin and not patches:
            raise ValueError("a cluster of Kamailio's stock configs needs Pushgate's patch")
        self.nodes: list[Kamailio] = []
        for i in range(size):
            node = (
                first
                if i == 0
                else Kamailio(
                    workdir=root / f"node{i}",
                    db_url=pg.url,
                    hold_timeout=first.hold_timeout,
                    secret=first.secret,
                    version=first.version,
                )
            )
            node.workdir.mkdir(parents=True, exist_ok=True)
            make_node(node, ips, i, first.sip_port, dropin=dropin)
            if dropin:
                self._use_stock(self.flavour, patches, files_of, None if i == 0 else node)
            self.nodes.append(node)
        self.pushds: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, *, pushd: bool = True) -> Cluster:
        super().start(pushd=False)  # PostgreSQL tables, fakes, node 0
        for i, node in enumerate(self.nodes[1:], 1):
            node.start()
            self.wait_joined(i)
        if pushd:
            for i in range(len(self.nodes)):
                self.start_node_pushd(i)
        return self

    def stop(self) -> None:
        for i in list(self.pushds):
            stop(self.pushds.pop(i))
        for node in self.nodes[1:]:
            node.stop()
        super().stop()

    # ----- nodes -----
    def node_pushd_log(self, i: int) -> Path:
        return self.logs / f"pushd-node{i}.log"

    def start_node_pushd(self, i: int) -> None:
        node = self.nodes[i]
        config = self.pushd_config(node, f"pushd-node{i}")
        self.pushds[i] = self.spawn_pushd(config, self.node_pushd_log(i), node)

    def dmq_nodes(self, i: int) -> str:
        return self.nodes[i].kamcmd("dmq.list_nodes")

    def wait_joined(self, i: int, timeout: float = 10) -> None:
        """Node i lists every other node as active (dmq's own view)."""
        others = [n.listen_ip for j, n in enumerate(self.nodes) if j != i]

        def joined() -> bool:
            listing = self.dmq_nodes(i)
            return all(ip in listing for ip in others) and "disabled" not in listing

        wait_until(joined, timeout, f"node {i} to join the cluster")

    def kill_node(self, i: int) -> None:
        """SIGKILL node i and its processes (a crash): no goodbye to the others."""
        node = self.nodes[i]
        assert node.pid is not None
        os.killpg(node.pid, signal.SIGKILL)
        node.stop()

    def restart_node(self, i: int) -> None:
        node = self.nodes[i]
        shutil.rmtree(node.rundir, ignore_errors=True)  # the dead one's ctl socket
        node.start()
        self.wait_joined(i)

    def node_events(self, i: int, name: str | None = None) -> list[dict[str, str]]:
        return [e for e in self.nodes[i].timeline() if name is None or e.get("event") == name]

    def ul_dump(self, i: int) -> str:
        return self.nodes[i].kamcmd("ul.dump")
