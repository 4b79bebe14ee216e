"""Tests across real hosts: Linux network namespaces on a bridge, built by each test.

- ``hosts.py``: :class:`Network` and :class:`Host`, the API that tests use;
- ``linux.py``: the ``ip``/``nft`` commands underneath, and the removal of dead runs' leftovers;
- ``relay.py``: TCP relays from the bridge to the services on the root namespace's loopback;
- ``redis_server.py``: a private Redis that a test may kill, freeze and restart;
- ``conftest.py``: the fixtures (``network``, ``shared_redis``, ``private_redis``, ...).
"""
