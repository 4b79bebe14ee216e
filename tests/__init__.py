"""wiremesh's tests, a package so that shared helpers are imported by name.

``tests/core/test_x.py`` tests ``src/wiremesh/core/x.py``, and so on for every folder.
Helpers that several test modules share are modules of this package, imported as
``tests.fixtures.meshes``, ``tests.gateway.ws_mesh`` and so on (pytest puts the
project's root on ``sys.path``: ``pythonpath`` in ``pyproject.toml``). Service modules
that node processes load by name (``tests/fixtures/svc_*.py``) stay plain modules of
their folder, which the meshes put on the nodes' ``python_path``.
"""
