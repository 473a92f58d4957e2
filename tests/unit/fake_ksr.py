"""A stand-in for Kamailio's ``KSR`` module, so ``kemi/`` can be unit-tested outside Kamailio.

It keeps what Pushgate's code reads back (pseudo-variables, htables) and records every
other call as ``(module, function, args)``; a test sets return values with ``returns``.
``install()`` puts a fresh one in ``sys.modules["KSR"]`` before ``kemi`` is imported.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

Call = tuple[str, str, tuple[Any, ...]]


class _Module:
    """One KSR submodule (``KSR.tm``, ...): records calls, returns what the test set."""

    def __init__(self, ksr: FakeKSR, name: str) -> None:
        self._ksr = ksr
        self._name = name

    def __getattr__(self, function: str) -> Callable[..., Any]:
        if function.startswith("__"):
            raise AttributeError(function)

        def call(*args: Any) -> Any:
            self._ksr.calls.append((self._name, function, args))
            result = self._ksr.returns.get(f"{self._name}.{function}", 1)
            return result(*args) if callable(result) else result

        return call


class _Pv:
    def __init__(self, ksr: FakeKSR) -> None:
        self._ksr = ksr

    def get(self, name: str) -> Any:
        return self._ksr.pvs.get(name)

    def gete(self, name: str) -> Any:
        return self._ksr.pvs.get(name, "")

    def sets(self, name: str, value: str) -> int:
        self._ksr.pvs[name] = value
        return 1

    def seti(self, name: str, value: int) -> int:
        self._ksr.pvs[name] = value
        return 1


class _Htable:
    """htable semantics Pushgate relies on: per-table dicts, expiry ignored."""

    def __init__(self, ksr: FakeKSR) -> None:
        self._ksr = ksr

    def _t(self, table: str) -> dict[str, Any]:
        return self._ksr.tables.setdefault(table, {})

    def sht_get(self, table: str, key: str) -> Any:
        return self._t(table).get(key)

    def sht_sets(self, table: str, key: str, value: str) -> int:
        self._t(table)[key] = value
        return 1

    def sht_seti(self, table: str, key: str, value: int) -> int:
        self._t(table)[key] = value
        return 1

    def sht_setxs(self, table: str, key: str, value: str, expire: int) -> int:
        return self.sht_sets(table, key, value)

    def sht_setxi(self, table: str, key: str, value: int, expire: int) -> int:
        return self.sht_seti(table, key, value)

    def sht_rm(self, table: str, key: str) -> int:
        self._t(table).pop(key, None)
        return 1

    def sht_inc(self, table: str, key: str) -> int:
        value = int(self._t(table).get(key, 0)) + 1
        self._t(table)[key] = value
        return value

    def sht_dec(self, table: str, key: str) -> int:
        value = int(self._t(table).get(key, 0)) - 1
        self._t(table)[key] = value
        return value

    def sht_match_name(self, table: str, op: str, prefix: str) -> int:
        assert op == "sw"
        return 1 if any(k.startswith(prefix) for k in self._t(table)) else -1

    def sht_iterator_start(self, name: str, table: str) -> int:
        self._ksr.iterators[name] = list(self._t(table).items())
        return 1

    def sht_iterator_next(self, name: str) -> int:
        items = self._ksr.iterators[name]
        if not items:
            return -1
        key, value = items.pop(0)
        self._ksr.pvs[f"$shtitkey({name})"] = key
        self._ksr.pvs[f"$shtitval({name})"] = value
        return 1

    def sht_iterator_end(self, name: str) -> int:
        del self._ksr.iterators[name]
        return 1

    def sht_lock(self, table: str, key: str) -> int:
        self._ksr.calls.append(("htable", "sht_lock", (table, key)))
        return 1

    def sht_unlock(self, table: str, key: str) -> int:
        self._ksr.calls.append(("htable", "sht_unlock", (table, key)))
        return 1


MODULES = [
    "tm",
    "tmx",
    "sl",
    "hdr",
    "siputils",
    "registrar",
    "tcpops",
    "tsilo",
    "msilo",
    "uac",
    "evapi",
    "corex",
    "jsonrpcs",
    "xhttp",
    "xhttp_prom",
    "auth",
    "auth_db",
    "nathelper",
    "path",
    "rr",
    "maxfwd",
    "sanity",
]


class FakeKSR(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("KSR")
        self.calls: list[Call] = []
        self.returns: dict[str, Any] = {}
        self.pvs: dict[str, Any] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self.iterators: dict[str, list[tuple[str, Any]]] = {}
        self.log: list[tuple[str, str]] = []
        self.method = "INVITE"
        self.pv = _Pv(self)
        self.htable = _Htable(self)
        for name in MODULES:
            setattr(self, name, _Module(self, name))

    # core functions
    def info(self, text: str) -> None:
        self.log.append(("info", text))

    def err(self, text: str) -> None:
        self.log.append(("err", text))

    def warn(self, text: str) -> None:
        self.log.append(("warn", text))

    def dbg(self, text: str) -> None:
        self.log.append(("dbg", text))

    def is_method_in(self, letters: str) -> bool:
        return self.method[0] in letters

    def is_INVITE(self) -> bool:
        return self.method == "INVITE"

    def is_REGISTER(self) -> bool:
        return self.method == "REGISTER"

    def is_MESSAGE(self) -> bool:
        return self.method == "MESSAGE"

    def is_CANCEL(self) -> bool:
        return self.method == "CANCEL"

    def is_ACK(self) -> bool:
        return self.method == "ACK"

    def is_OPTIONS(self) -> bool:
        return self.method == "OPTIONS"

    def is_KDMQ(self) -> bool:
        return self.method == "KDMQ"

    def is_myself(self, uri: str) -> bool:
        return bool(self.returns.get("is_myself", False))

    def set_drop(self) -> None:
        self.calls.append(("core", "set_drop", ()))

    def set_forward_no_connect(self) -> None:
        self.calls.append(("core", "set_forward_no_connect", ()))

    def called(self, module: str, function: str) -> list[tuple[Any, ...]]:
        """Arguments of every call of ``module.function``, in order."""
        return [args for m, f, args in self.calls if (m, f) == (module, function)]


def install() -> FakeKSR:
    """The fake in ``sys.modules`` (one per test session: kemi modules already imported
    keep their ``KSR`` reference, so every test module shares it); tests import kemi after
    this and reset with ``reset()``."""
    existing = sys.modules.get("KSR")
    if isinstance(existing, FakeKSR):
        return reset()
    fake = FakeKSR()
    sys.modules["KSR"] = fake
    return fake


def current() -> FakeKSR:
    ksr = sys.modules.get("KSR")
    assert isinstance(ksr, FakeKSR), "call fake_ksr.install() before importing kemi"
    return ksr


def reset() -> FakeKSR:
    """Clear the installed fake's state (the kemi modules keep pointing at it)."""
    ksr = current()
    ksr.__init__()  # type: ignore[misc]
    return ksr
