"""The recsys API protos (package recsys.*)."""
