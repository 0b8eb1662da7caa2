"""TLS, mutual TLS, bearer-token auth and message-size limits on a real server (certificates made here)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import pathlib

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.errors import ArtifactError
from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import ClientSecurity, RecommendServer, SecurityConfig, ServerConfig, client_channel

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-tests"


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_key=None, issuer_name: x509.Name | None = None, ca: bool = False,
          san: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: pathlib.Path, key=None, cert=None) -> str:
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a stranger's one."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = _key(), _key()
    ca = _cert("recsys test CA", ca_key, ca=True)
    rogue = _cert("someone else's CA", rogue_key, ca=True)
    files = {"ca": _write(d / "ca.pem", cert=ca)}
    for name, issuer_key, issuer, san in (("server", ca_key, ca, True), ("client", ca_key, ca, False),
                                          ("stranger", rogue_key, rogue, False)):
        key = _key()
        files[f"{name}_key"] = _write(d / f"{name}.key", key=key)
        files[f"{name}_cert"] = _write(d / f"{name}.pem", cert=_cert(name, key, issuer_key, issuer.subject, san=san))
    return files


@pytest.fixture(params=[True, False], ids=["aio", "threads"])
def serve_with(pipeline, request):
    """serve_with(SecurityConfig) -> target; the server answers with the shared tiny pipeline (both server models)."""
    servers = []

    def _serve(security: SecurityConfig) -> str:
        server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0, aio=request.param),
                                 security=security)
        servers.append(server)
        server.start()
        server.set_model(pipeline)
        return f"127.0.0.1:{server.port}"

    _serve.servers = servers
    yield _serve
    for server in servers:
        server.stop(grace=0)


def recommend(channel: grpc.Channel, user: str = "nobody") -> pb.RecommendResponse:
    return pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id=user, num_results=3), timeout=10)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(serve_with, pki):
    target = serve_with(SecurityConfig(tls_cert=pki["server_cert"], tls_key=pki["server_key"]))
    with client_channel(target, ClientSecurity(tls_ca=pki["ca"])) as channel:
        assert recommend(channel).source == pb.FALLBACK
    with grpc.insecure_channel(target) as channel:
        assert code_of(lambda: recommend(channel)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(serve_with, pki):
    target = serve_with(SecurityConfig(tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                                       tls_client_ca=pki["ca"]))
    with client_channel(target, ClientSecurity(tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                                               tls_key=pki["client_key"])) as channel:
        assert recommend(channel).source == pb.FALLBACK
    with client_channel(target, ClientSecurity(tls_ca=pki["ca"])) as channel:
        assert code_of(lambda: recommend(channel)) == grpc.StatusCode.UNAVAILABLE
    with client_channel(target, ClientSecurity(tls_ca=pki["ca"], tls_cert=pki["stranger_cert"],
                                               tls_key=pki["stranger_key"])) as channel:
        assert code_of(lambda: recommend(channel)) == grpc.StatusCode.UNAVAILABLE


def test_token_auth_refuses_missing_and_wrong_tokens_but_health_and_reflection_stay_open(serve_with, tmp_path,
                                                                                         monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# accepted tokens\n{TOKEN}\nsecond-token  # rotated in\n")
    monkeypatch.setenv("RECSYS_TEST_TOKENS", "from-env-1, from-env-2")
    target = serve_with(SecurityConfig(auth_tokens_file=str(tokens), auth_tokens_env="RECSYS_TEST_TOKENS"))
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        assert code_of(lambda: recommend(channel)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: stub.SimilarItems(pb.SimilarItemsRequest(item_id="x", num_results=3), timeout=10)) \
            == grpc.StatusCode.UNAUTHENTICATED
        for header in (f"Bearer {TOKEN}x", TOKEN, "Basic abc", "Bearer "):
            assert code_of(lambda: stub.Recommend(pb.RecommendRequest(user_id="u", num_results=3), timeout=10,
                                                  metadata=(("authorization", header),))) \
                == grpc.StatusCode.UNAUTHENTICATED
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        metrics = serve_with.servers[-1].metrics  # refusals are counted by method, before any servicer ran
        assert metrics.value("recsys_requests_total", {"method": "Recommend", "code": "UNAUTHENTICATED"}) == 5
        assert metrics.value("recsys_requests_total", {"method": "SimilarItems", "code": "UNAUTHENTICATED"}) == 1
        answers = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert "recsys.v1.Recommender" in {s.name for s in answers[0].list_services_response.service}
    for token in (TOKEN, "second-token", "from-env-2"):
        with client_channel(target, ClientSecurity(token=token)) as channel:
            assert recommend(channel).source == pb.FALLBACK


def test_tls_and_token_together_through_the_cli_client(serve_with, pki, tmp_path, monkeypatch, capsys):
    from recsys.cli import main as recsys_main

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    target = serve_with(SecurityConfig(tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                                       auth_tokens_file=str(tokens)))
    args = ["recommend", "--user", "nobody", "--target", target, "--tls-ca", pki["ca"], "--json"]
    monkeypatch.delenv("RECSYS_TOKEN", raising=False)
    assert recsys_main(args) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("RECSYS_TOKEN", TOKEN)
    assert recsys_main(args) == 0
    assert '"source": "FALLBACK"' in capsys.readouterr().out


def test_messages_over_the_size_limit_are_resource_exhausted(serve_with):
    target = serve_with(SecurityConfig(max_message_bytes=4096))
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        big = pb.RecommendRequest(user_id="u", num_results=3, exclude_item_ids=["x" * 100] * 50)
        assert code_of(lambda: stub.Recommend(big, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert recommend(channel).source == pb.FALLBACK


def test_undecodable_request_bytes_are_invalid_argument(serve_with):
    target = serve_with(SecurityConfig())
    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary("/recsys.v1.Recommender/Recommend", request_serializer=None,
                                  response_deserializer=pb.RecommendResponse.FromString)
        non_utf8_user = b"\x0a\x03\xff\xfe\xfd" + pb.RecommendRequest(num_results=3).SerializeToString()
        for payload in (non_utf8_user, b"\xff\xff\xff\xff", b"\x0a\x7f\x01"):
            assert code_of(lambda: raw(payload, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("kwargs, flag", [
    ({"tls_cert": "a.pem"}, "--tls-key"),
    ({"tls_client_ca": "ca.pem"}, "--tls-client-ca"),
    ({"max_message_bytes": 10}, "--max-message-bytes"),
])
def test_security_config_rejects_incomplete_settings(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        SecurityConfig(**kwargs)


def test_unreadable_files_name_the_flag(tmp_path):
    with pytest.raises(ArtifactError, match="--tls-key"):
        RecommendServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0),
                        security=SecurityConfig(tls_cert=str(tmp_path / "no.pem"), tls_key=str(tmp_path / "no.key")))
    empty = tmp_path / "tokens"
    empty.write_text("# nobody\n")
    with pytest.raises(ArtifactError, match="no token"):
        RecommendServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0),
                        security=SecurityConfig(auth_tokens_file=str(empty)))
