"""Generated gRPC stubs for the recsys.v1 API."""
