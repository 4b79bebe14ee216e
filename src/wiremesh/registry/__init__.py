"""Who is alive in the mesh, and where: the :class:`Registry` interface and its backends."""

from wiremesh.registry.backends import open_registry
from wiremesh.registry.base import Lease, Registry
from wiremesh.registry.view import MeshView

__all__ = ["Lease", "MeshView", "Registry", "open_registry"]
