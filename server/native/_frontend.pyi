# Types of the native gRPC frontend (frontend.cpp).
CALL: int
MESSAGE: int
HALF_CLOSE: int
CANCELLED: int
DONE: int
WRITABLE: int
HIGH_WRITES: int
GRPC_VERSION: str

class Frontend:
    def __init__(self, streaming_methods: list[str]) -> None: ...
    def start(
        self,
        address: str,
        max_receive: int,
        max_send: int,
        reuse_port: bool,
        private_key: bytes | None = None,
        cert_chain: bytes | None = None,
        root_certs: bytes | None = None,
        mutual: bool = False,
    ) -> int: ...
    def shutdown(self, grace_s: float) -> None: ...
    def fileno(self) -> int: ...
    def open_calls(self) -> int: ...
    def drain(self) -> list[tuple[object, ...]]: ...
    def finish(self, id: int, code: int, details: str, payload: bytes | None = None) -> None: ...
    def write(self, id: int, payload: bytes) -> int: ...
    def read(self, id: int) -> None: ...
