"""bench.register_cost's variants of Pushgate's all-in-one routing (KEMI_SCRIPT).

Loaded by app_python3 instead of kemi/pushgate_kemi.py: the same Router, changed only
as the environment asks (set per Kamailio instance by the benchmark):

``PUSHGATE_BENCH_STUB``     ``+``-separated steps replaced by no-ops, to measure what
                            each costs by difference (same run, same machine state):
                            ``register`` (pushgate.register: RFC 8599 checks),
                            ``registered`` (pushgate.registered: wake-up handling),
                            ``reqinit`` (maxfwd + sanity), ``log`` (timeline lines)
``PUSHGATE_BENCH_PROFILE``  a directory: every request route runs under cProfile (CPU
                            time of the worker, not wall-clock time); each worker writes
                            ``<pid>.prof`` there every PROFILE_EVERY requests. Calls into
                            Kamailio (``KSR.*``) are C functions: cProfile lists them as
                            built-ins, so their time is told apart from Pushgate's Python.
"""

from __future__ import annotations

import cProfile
import os
import time

from kemi import api, hooks, pushgate_kemi

PROFILE = os.environ.get("PUSHGATE_BENCH_PROFILE", "")
STUBS = frozenset(s for s in os.environ.get("PUSHGATE_BENCH_STUB", "").split("+") if s)
PROFILE_EVERY = 250
KNOWN = frozenset({"register", "registered", "reqinit", "log"})

if STUBS - KNOWN:
    raise ValueError(f"PUSHGATE_BENCH_STUB: unknown steps {sorted(STUBS - KNOWN)}")
if "register" in STUBS:
    api.pushgate.register = lambda: True  # type: ignore[method-assign]
if "registered" in STUBS:
    api.pushgate.registered = lambda: None  # type: ignore[method-assign]
if "log" in STUBS:
    hooks.log = lambda event, **fields: None  # type: ignore[assignment]

_profile = cProfile.Profile(time.thread_time)
_count = 0


class VariantRouter(pushgate_kemi.Router):
    def route_reqinit(self) -> bool:
        return True if "reqinit" in STUBS else super().route_reqinit()

    def ksr_request_route(self, msg: object) -> int:
        if not PROFILE:
            return super().ksr_request_route(msg)
        global _count
        _profile.enable()
        try:
            return super().ksr_request_route(msg)
        finally:
            _profile.disable()
            _count += 1
            if _count % PROFILE_EVERY == 0:
                _profile.dump_stats(f"{PROFILE}/{os.getpid()}.prof")


def mod_init() -> VariantRouter:
    return VariantRouter()
