"""Read an AoR's bindings out of usrloc (the I/O edge for pushgate.decision)."""

from __future__ import annotations

import time
from collections.abc import Callable

import KSR

from pushgate import pn_params
from pushgate.cluster import Node
from pushgate.decision import Binding, expired, flow_alive, transport_of

# Name of the contact container filled by reg_fetch_contacts.
_C = "pg"

flow_override: Callable[[str, Binding], Binding] | None = None
"""Edge mode (kemi/edge.py ``with_flow``): the phone's flow is not usrloc's, whose
``save()`` ran on the upstream's reply. Set once per process by ``Hooks``."""

cluster_node: Node | None = None
"""Several nodes (kemi/cluster.py): a binding whose Path starts at another node is that
node's. Set once per process by ``Hooks``."""


def _ulc(field: str, i: int) -> str:
    value = KSR.pv.get(f"$(ulc({_C}=>{field})[{i}])")
    return "" if value is None else str(value)


def fetch(aor: str, push: bool = True) -> tuple[str, list[Binding]]:
    """usrloc's key of the AoR (``alice`` or ``alice@domain``, after its ``use_domain``)
    and its current bindings with their live/asleep state (``("", [])`` if none).

    ``push=False``: the bindings' push parameters are not parsed (``Binding.push`` is
    None): for a caller that only needs their flows, saving most of the cost."""
    if KSR.registrar.reg_fetch_contacts("location", aor, _C) < 0:
        return "", []
    try:
        key = str(KSR.pv.get(f"$(ulc({_C}=>aor))") or "")
        count = int(KSR.pv.get(f"$(ulc({_C}=>count))") or 0)
        out = []
        now = time.time()
        for i in range(count):
            # usrloc hands out contacts that expired but were not purged yet: skip them.
            if expired(int(_ulc("expires", i) or 0), now):
                continue
            uri = _ulc("addr", i)
            received = _ulc("received", i)
            conid = int(_ulc("conid", i) or -1)
            transport = transport_of(_ulc("socket", i), received, uri)
            is_open = conid > 0 and KSR.tcpops.tcp_conid_alive(conid) > 0
            try:
                params = pn_params.parse_uri(uri) if push else None
            except pn_params.PnError:
                params = None  # validated at REGISTER; a stored bad one is simply not pushable
            remote = cluster_node is not None and not cluster_node.owns(_ulc("path", i))
            binding = Binding(
                ruid=_ulc("ruid", i),
                uri=uri,
                instance=_ulc("instance", i),
                transport=transport,
                alive=remote or flow_alive(transport, conid, is_open),
                push=params,
                target=received or uri,
                conid=0 if remote else max(conid, 0),
                remote=remote,
            )
            out.append(binding if flow_override is None else flow_override(key, binding))
        return key, out
    finally:
        KSR.registrar.reg_free_contacts(_C)
