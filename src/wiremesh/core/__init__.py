"""The core without I/O: values in, decisions out.

Nothing in this package opens a socket, starts a task or reads a clock it was not given.
Routing, balancing, deadlines, retries, backoff, membership and payload shapes live here
and are tested with plain function calls.
"""
