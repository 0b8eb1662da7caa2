"""Transport security and request hardening for the gRPC server: TLS/mTLS, bearer tokens, strict decoding.

- TLS: `server_credentials` from PEM files; with a client CA the server requires and
  checks client certificates (mutual TLS).
- Tokens: `TokenAuthInterceptor` wants `authorization: Bearer <token>` metadata on every
  RPC except health checking and reflection (so probes and grpcurl-style discovery work
  without a secret); a missing or unknown token is UNAUTHENTICATED. Tokens come from a
  file (one per line, `#` comments) and/or an environment variable (comma-separated),
  never from a flag value, and are compared with `hmac.compare_digest`.
- Strict decoding: `StrictDecoding` registers every unary handler so that it parses its
  request bytes itself, so a message that is not valid protobuf (e.g. a string field holding
  non-UTF-8 bytes) is INVALID_ARGUMENT instead of the INTERNAL "Exception deserializing
  request!" grpcio gives when its own deserializer fails. It wraps each handler once, when it
  is registered: an interceptor did the same wrapping on every call, in gRPC's one polling
  thread that every RPC passes through (issue 14).
- Both server models: on a grpc.aio server (serving/aio.py) the token check is
  `AioTokenAuthInterceptor` and strict decoding wraps coroutine handlers in a coroutine.
- Message size: `server_options` caps received and sent messages (gRPC answers
  RESOURCE_EXHAUSTED above the cap before any handler runs).
"""
from __future__ import annotations

import dataclasses
import hmac
import inspect
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from core.errors import ArtifactError, InvalidRequestError

log = logging.getLogger(__name__)

# Methods under these prefixes never need a token: liveness probes and service discovery.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                        "/grpc.reflection.v1.ServerReflection/")
AUTH_HEADER = "authorization"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's own default receive limit, made explicit


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    """TLS, token auth and message-size limits of the server; every field is a `recsys serve` flag.

    tls_cert / tls_key: PEM server certificate chain and private key; both or neither
      ("" = plaintext, for loopback and tests only).
    tls_client_ca: PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    auth_tokens_file: file of accepted bearer tokens, one per line ('#' starts a comment).
    auth_tokens_env: name of an environment variable holding comma-separated accepted tokens.
      With neither set (or both empty), no token is required.
    max_message_bytes: largest request and response message accepted, in bytes.
    """

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_tokens_file: str = ""
    auth_tokens_env: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both (TLS) or neither (plaintext)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
        if self.max_message_bytes < 1024:
            raise ValueError(f"--max-message-bytes must be >= 1024, got {self.max_message_bytes}")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def auth(self) -> bool:
        return bool(self.auth_tokens_file or self.auth_tokens_env)


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{flag} {path}: cannot read it ({e.strerror or e})") from e
    if b"-----BEGIN" not in data:
        raise ArtifactError(f"{flag} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def check_key_pair(cert_path: str, key_path: str, cert: bytes, key: bytes) -> None:
    """ArtifactError unless `cert` is a certificate chain and `key` its private key (gRPC itself only
    reports "Failed to bind" for a bad pair, after the port is claimed)."""
    import ssl

    if b"PRIVATE KEY-----" in cert and b"CERTIFICATE-----" in key:
        raise ArtifactError(f"--tls-cert {cert_path} holds a private key and --tls-key {key_path} a certificate: "
                            "the two are swapped")
    if b"CERTIFICATE-----" not in cert:
        raise ArtifactError(f"--tls-cert {cert_path}: no certificate in it (no 'BEGIN CERTIFICATE' line)")
    if b"PRIVATE KEY-----" not in key:
        raise ArtifactError(f"--tls-key {key_path}: no private key in it (no 'BEGIN ... PRIVATE KEY' line)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        raise ArtifactError(f"--tls-cert {cert_path} and --tls-key {key_path} are not a certificate and its "
                            f"private key ({e.reason or e})") from e
    except OSError as e:
        raise ArtifactError(f"--tls-cert {cert_path} / --tls-key {key_path}: cannot read them ({e})") from e


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials:
    """TLS credentials from the config's PEM files (checked to be a matching certificate and key);
    mutual TLS when tls_client_ca is set."""
    key = _read_pem(config.tls_key, "--tls-key")
    cert = _read_pem(config.tls_cert, "--tls-cert")
    check_key_pair(config.tls_cert, config.tls_key, cert, key)
    ca = _read_pem(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def server_options(config: SecurityConfig) -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes)]


def load_tokens(config: SecurityConfig) -> tuple[bytes, ...]:
    """The accepted tokens (file lines and env entries, stripped, non-empty, deduplicated).

    Raises ArtifactError for an unreadable file, and when auth is configured but yields
    no token at all (a server nobody can call is a misconfiguration, not a policy).
    """
    tokens: list[str] = []
    if config.auth_tokens_file:
        try:
            text = pathlib.Path(config.auth_tokens_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactError(f"--auth-tokens-file {config.auth_tokens_file}: cannot read it ({e})") from e
        tokens += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    if config.auth_tokens_env:
        tokens += [t.strip() for t in os.environ.get(config.auth_tokens_env, "").split(",")]
    unique = tuple(dict.fromkeys(t.encode() for t in tokens if t))
    if config.auth and not unique:
        raise ArtifactError(f"token auth is configured (--auth-tokens-file {config.auth_tokens_file!r}, "
                            f"--auth-tokens-env {config.auth_tokens_env!r}) but no token was found")
    return unique


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
                   aio: bool = False) -> grpc.RpcMethodHandler:
    """A handler of the same arity as `handler` that only answers `code` (a coroutine on a grpc.aio server)."""
    def abort(_request, context: grpc.ServicerContext):
        context.abort(code, message)

    async def abort_async(_request, context: grpc.aio.ServicerContext):
        await context.abort(code, message)

    refuse = abort_async if aio else abort
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for RPCs without `authorization: Bearer <accepted token>`; health and reflection open.

    Args:
      tokens: accepted tokens (bytes); compared in constant time against each.
      on_reject: called with the method name for every refused RPC (e.g. a metrics counter).
    """

    def __init__(self, tokens: Sequence[bytes],
                 on_reject: Callable[[str], None] | None = None) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._tokens = tuple(tokens)
        self._on_reject = on_reject

    def _accepts(self, header: str | bytes | None) -> bool:
        if header is None:
            return False
        raw = header.encode("utf-8", "replace") if isinstance(header, str) else header
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token = token.strip()
        ok = False
        for accepted in self._tokens:  # no early exit: the time taken does not depend on which token matched
            ok |= hmac.compare_digest(token, accepted)
        return ok

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        return self._checked(continuation(handler_call_details), handler_call_details, aio=False)

    def _checked(self, handler: grpc.RpcMethodHandler | None, handler_call_details: grpc.HandlerCallDetails,
                 aio: bool) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        header = next((v for k, v in (handler_call_details.invocation_metadata or ()) if k == AUTH_HEADER), None)
        if self._accepts(header):
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        reason = "missing" if header is None else "invalid"
        return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                              f"{reason} credentials: send metadata 'authorization: Bearer <token>' "
                              "with a token the server accepts", aio)


class AioTokenAuthInterceptor(TokenAuthInterceptor, grpc.aio.ServerInterceptor):
    """TokenAuthInterceptor for a grpc.aio server (serving/aio.py): the same check, an awaited continuation."""

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        return self._checked(await continuation(handler_call_details), handler_call_details, aio=True)


def strict_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` parsing its own request: undecodable bytes are INVALID_ARGUMENT, not INTERNAL.

    Unary-unary handlers only (others are returned as they are). The behaviour may also return
    bytes it serialized itself (a memoized answer, serving/server.py): those are sent as they are.
    """
    if (handler.request_streaming or handler.response_streaming or handler.request_deserializer is None
            or handler.unary_unary is None):
        return handler
    decode, behaviour, serialize = handler.request_deserializer, handler.unary_unary, handler.response_serializer
    name = method.rsplit("/", 1)[-1]

    def refusal(e: Exception) -> str:
        return (f"the request is not a valid {name} message "
                f"({type(e).__name__}: {str(e)[:200]}); string fields must be UTF-8")

    def strict(raw: bytes, context: grpc.ServicerContext):
        try:
            request = decode(raw)
        except Exception as e:  # protobuf raises DecodeError, upb sometimes other types
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(e))
        return behaviour(request, context)

    async def strict_async(raw: bytes, context: grpc.aio.ServicerContext):  # a grpc.aio coroutine handler
        try:
            request = decode(raw)
        except Exception as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(e))
        return await behaviour(request, context)

    def serializer(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return grpc.unary_unary_rpc_method_handler(strict_async if inspect.iscoroutinefunction(behaviour) else strict,
                                               request_deserializer=None,
                                               response_serializer=serializer if serialize is not None else None)


class _StrictGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose unary handlers decode strictly; each wrapped once per method, then reused."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, strict_handler(handler, method))
        return known[1]


class StrictDecoding:
    """`server` as the generated `add_*_to_server` functions see it: what they register decodes strictly.

    Pass it where a gRPC server is expected when adding servicers (`add_RecommenderServicer_to_server(s,
    StrictDecoding(server))`); every unary handler is wrapped by `strict_handler` once, at registration,
    so no per-call interceptor is needed.
    """

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service_name, {
            name: strict_handler(h, f"/{service_name}/{name}") for name, h in method_handlers.items()})

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_StrictGenericHandler(h) for h in handlers))


def server_interceptors(config: SecurityConfig, on_reject: Callable[[str], None] | None = None,
                        aio: bool = False) -> list[grpc.ServerInterceptor]:
    """The interceptors for `config` (for a grpc.aio server with `aio`): token auth when configured, else none
    (gRPC then runs no interceptor code per call; strict decoding is applied at registration, `StrictDecoding`)."""
    if config.auth:
        return [(AioTokenAuthInterceptor if aio else TokenAuthInterceptor)(load_tokens(config), on_reject)]
    return []


def add_port(server: grpc.Server, address: str, config: SecurityConfig) -> int:
    """Listens on `address` with TLS when configured; returns the bound port (0 = failed)."""
    if config.tls:
        return server.add_secure_port(address, server_credentials(config))
    return server.add_insecure_port(address)


# -- client side (recsys recommend, tests, benches) ------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a secured server.

    tls_ca: PEM CA that signed the server certificate ("" = plaintext channel).
    tls_cert / tls_key: the client's own certificate and key, for mutual TLS.
    tls_server_name: expected name in the server certificate when it differs from the
      target host (e.g. a certificate for "localhost" reached as 127.0.0.1).
    token: bearer token sent as `authorization` metadata on every call ("" = none).
    """

    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    token: str = ""


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = tuple(client_call_details.metadata or ()) + self._metadata
        return continuation(client_call_details._replace(metadata=metadata)
                            if hasattr(client_call_details, "_replace")
                            else _CallDetails(client_call_details, metadata), request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


# The documented client config (README, "Running several replicas"): round-robin over every address the
# target resolves to, and retries of the Recommender's calls, which are idempotent reads.
# - round_robin: one connection per replica (each `recsys serve`, or each fleet of processes on one port),
#   calls spread over the READY ones; a replica that goes away leaves the rotation when its connection
#   closes and rejoins when it accepts connections again (gRPC's reconnect backoff).
# - retries: a call in flight on a replica that dies (kill -9) or stops fails UNAVAILABLE, and a server
#   that is stopping (SIGTERM, or the old generation of a blue_green swap) cancels the calls that race
#   with its shutdown — about one per stop under steady traffic (measured: 5 CANCELLED in 5 stops, 0 with
#   this policy). Both are retried on the next pick, i.e. on another replica. gRPC retries only
#   server-sent or transport statuses, so a call the client itself cancels is never retried.
# - the retry backoff spans a reconnect: a call (or a retry) that finds no connection ready fails at once
#   (no waitForReady: a client whose TLS or address is wrong should hear UNAVAILABLE with the reason,
#   not wait for its deadline). That happens when every connection of the channel was on the process
#   that died and the reconnect hit a listener as it closed (Linux resets the connections queued on a
#   closing SO_REUSEPORT socket): the channel then waits its reconnect backoff (CLIENT_OPTIONS: 100 ms
#   to 2 s, not gRPC's 1 s to 120 s, so a restarted process or replica is reconnected within seconds).
#   Four retries drawn up to 0.1, 0.2, 0.4 and 0.8 s outlast that; the first policy here (3 attempts,
#   10–200 ms) failed 30 of 20,844 calls across 3 kills of a `--processes 2` fleet (bench/RESULTS.md,
#   fleet faults). Set "waitForReady": true in your copy to wait out longer outages within the deadline.
# - healthCheckConfig: each connection watches the server's health (grpc.health.v1 Watch) and round robin
#   picks only replicas that report SERVING — not one that listens while its model still loads (a single
#   `recsys serve` opens its port at once), not a fleet whose processes are not all ready, not one that
#   drains after SIGTERM (NOT_SERVING from its first moment of shutdown).
CLIENT_SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "recsys.v1.Recommender"},
    "methodConfig": [{
        "name": [{"service": "recsys.v1.Recommender"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
    }],
}
RETRY_SERVICE_CONFIG = json.dumps(CLIENT_SERVICE_CONFIG)
CLIENT_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.service_config", RETRY_SERVICE_CONFIG),
                                               ("grpc.initial_reconnect_backoff_ms", 100),
                                               ("grpc.min_reconnect_backoff_ms", 100),
                                               ("grpc.max_reconnect_backoff_ms", 2000))
_SCHEMES = ("ipv4:", "ipv6:", "dns:", "unix:", "unix-abstract:", "vsock:")


def channel_target(target: str) -> str:
    """A gRPC target for `target`: one address or name (`host:port`, `dns:///name:port` — every address the
    name resolves to is a replica), a gRPC target with a scheme (`ipv4:10.0.0.1:50051,10.0.0.2:50051`),
    or several comma-separated `host:port` replicas, which become one `ipv4:`/`ipv6:` target (names among
    them resolved now, to their IPv4 addresses when they have any).

    Raises InvalidRequestError naming the entry that is not `host:port`.
    """
    import socket

    target = target.strip()
    if "," not in target or target.startswith(_SCHEMES):
        return target
    v4: list[str] = []
    v6: list[str] = []
    for entry in (e.strip() for e in target.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidRequestError(f"--target: {entry!r} is not host:port (several replicas: "
                                      "host1:port1,host2:port2)")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise InvalidRequestError(f"--target: cannot resolve {host!r} ({e.strerror})") from e
        found4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        found6 = [i[4][0] for i in infos if i[0] == socket.AF_INET6]
        if found4:
            v4 += [f"{a}:{port}" for a in dict.fromkeys(found4)]
        else:
            v6 += [f"[{a}]:{port}" for a in dict.fromkeys(found6)]
    if v4 and v6:
        raise InvalidRequestError(f"--target {target}: mixes IPv4 and IPv6-only replicas; gRPC takes one family "
                                  "per target")
    return f"ipv4:{','.join(dict.fromkeys(v4))}" if v4 else f"ipv6:{','.join(dict.fromkeys(v6))}"


def client_channel(target: str, security: ClientSecurity = ClientSecurity(),
                   options: Sequence[tuple[str, Any]] = CLIENT_OPTIONS) -> grpc.Channel:
    """A channel to `target` (one server or several replicas: channel_target): TLS (and a client certificate)
    when configured, the token on every unary call, and (by default) CLIENT_SERVICE_CONFIG's round-robin and
    retries."""
    target = channel_target(target)
    options = list(options)
    if security.tls_ca or security.tls_cert:
        ca = _read_pem(security.tls_ca, "--tls-ca") if security.tls_ca else None
        key = _read_pem(security.tls_key, "--tls-key") if security.tls_key else None
        cert = _read_pem(security.tls_cert, "--tls-cert") if security.tls_cert else None
        if security.tls_server_name:
            options.append(("grpc.ssl_target_name_override", security.tls_server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, _MetadataInterceptor(((AUTH_HEADER, f"Bearer {security.token}"),)))
    return channel


__all__ = ["SecurityConfig", "check_key_pair", "TokenAuthInterceptor", "StrictDecoding", "strict_handler", "server_credentials",
           "server_options", "server_interceptors", "load_tokens", "add_port", "ClientSecurity", "client_channel",
           "RETRY_SERVICE_CONFIG", "CLIENT_SERVICE_CONFIG", "CLIENT_OPTIONS", "channel_target",
           "OPEN_METHOD_PREFIXES"]
