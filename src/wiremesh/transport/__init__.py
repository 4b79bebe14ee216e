"""gRPC adapters: the node's server, the caller's client, channels and TLS.

grpcio's exceptions are translated to :mod:`wiremesh.errors` here, in :mod:`.wire`, once.
"""
