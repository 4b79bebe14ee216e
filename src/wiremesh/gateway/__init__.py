"""The browser gateway: secured WebSockets (and, on the same port, HTTP) to the mesh.

``wiremesh run`` starts it as one more process; ``wiremesh gateway`` runs one alone.
:mod:`wiremesh.gateway.server` is the process (:class:`~wiremesh.gateway.server.Gateway`),
:mod:`wiremesh.gateway.app` the ASGI application, :mod:`wiremesh.gateway.auth` tokens,
origins and access rules, :mod:`wiremesh.gateway.node_streams` the streams to the nodes and
:mod:`wiremesh.gateway.socket_hub` the node's end of them. Importing this package costs
nothing: node processes import the node side only.
"""
