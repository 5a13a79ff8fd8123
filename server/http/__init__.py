"""The HTTP transport: KServe v2 REST and the status page."""
