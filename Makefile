# Pushgate: the two commands of the README, plus their parts.
# Both install what they need (Debian packages, .venv) through scripts/bootstrap.sh.

PY := .venv/bin/python

.PHONY: demo test bootstrap lint typecheck unit e2e e2e-6.0 bench clean

demo: bootstrap
	$(PY) scripts/demo.py

test: bootstrap lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

bootstrap:
	bash scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check pushgate kemi

# The Kamailio-side code once more for Kamailio 6.0's Python (Debian 13: 3.13; 5.6's is 3.11).
typecheck: bootstrap
	.venv/bin/mypy
	.venv/bin/mypy --python-version 3.13 pushgate kemi

unit: bootstrap
	$(PY) -m pytest -q tests/unit

e2e: bootstrap
	$(PY) -m pytest -q -m e2e

# The cases that run on Kamailio 6.0 (Debian 13 root, .cache/trixie) only.
e2e-6.0: bootstrap
	$(PY) -m pytest -q -m e2e -k "6.0 or 6_0"

# The quick benchmarks (a few minutes each); the long ones (held_capacity, mass_register,
# soak) are run by hand: bench/README.md.
bench: bootstrap
	$(PY) -m bench.push_throughput
	$(PY) -m bench.sip_latency
	$(PY) -m bench.register_cost --rounds 3 --registers 2000
	$(PY) -m bench.held_scale --sizes 10,100,1000 --probes 100

clean:
	rm -rf .venv .mypy_cache .ruff_cache .cache
