"""The checked-in stubs are exactly what protos/generate.py produces from the .proto files."""
from __future__ import annotations

import pathlib

from protos import generate


def test_generated_stubs_are_fresh(tmp_path):
    written = generate.generate(tmp_path)
    assert len(written) == 3 * len(generate.PROTOS)
    for path in written:
        checked_in = generate.PROTO_ROOT / path.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run `python -m protos.generate`"
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in} is stale: run `python -m protos.generate` and commit the result")


def test_stubs_import_from_the_installed_package():
    from protos.recsys.v1 import recommender_pb2, recommender_pb2_grpc

    assert recommender_pb2.DESCRIPTOR.package == "recsys.v1"
    assert recommender_pb2.DESCRIPTOR.name == "recsys/v1/recommender.proto"
    assert hasattr(recommender_pb2_grpc, "RecommenderStub")
    assert pathlib.Path(recommender_pb2_grpc.__file__).parent == generate.PROTO_ROOT / "recsys" / "v1"
