"""Running services: the node (one process per service instance) and the supervisor."""
