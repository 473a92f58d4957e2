"""The KEMI functions Kamailio exports (``kamcmd app_python.api_list``) and the ones
Pushgate's Kamailio-side code calls, to check the second against the first per release.

``tests/ksr_api/<version>.txt`` hold each release's exports, one ``module.name(params) ->
ret`` a line (module ``KSR`` for the core's own); tests/e2e/test_ksr_api.py keeps them
equal to what the running Kamailio says, tests/unit/test_ksr_api.py checks kemi/ against
them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTS = REPO / "tests" / "ksr_api"

_FUNC = re.compile(
    r"func: \{\s*ret: (?P<ret>\S+)\s*module: ?(?P<module>\S*)\s*name: (?P<name>\S+)\s*"
    r"params: (?P<params>[^\n]*)\n"
)


def parse_api_list(rpc_output: str) -> list[str]:
    """``kamcmd app_python.api_list`` output as sorted ``module.name(params) -> ret`` lines."""
    return sorted(
        f"{m['module'] or 'KSR'}.{m['name']}({m['params'].strip()}) -> {m['ret']}"
        for m in _FUNC.finditer(rpc_output)
    )


def load(version: str) -> dict[str, int]:
    """``module.name`` -> number of parameters, from the stored list of ``version``."""
    out: dict[str, int] = {}
    for line in (LISTS / f"{version}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("(")
        params = rest.split(")", 1)[0].strip()
        out[name] = 0 if params in ("", "none") else len(params.split(","))
    return out


@dataclass(frozen=True)
class Call:
    function: str
    """``module.name`` as in the lists (``KSR.name`` for the core's own)."""
    nargs: int
    where: str


def calls_in(paths: list[Path]) -> list[Call]:
    """Every ``KSR.x(...)`` / ``KSR.module.x(...)`` call in the Python files ``paths``."""
    calls = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            chain: list[str] = [node.func.attr]
            value = node.func.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id != "KSR" or len(chain) > 2:
                continue
            function = ".".join(chain) if len(chain) == 2 else f"KSR.{chain[0]}"
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            calls.append(Call(function, len(node.args), where))
    return calls
