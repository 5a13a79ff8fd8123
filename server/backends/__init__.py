"""Backends: one module per model format, each described by a ``BackendSpec``.

``warpserve.server.backends.spec`` holds the spec type, the registry and how to add
a format; the server, ``compile/`` and the demo find formats only through it.
"""
