"""The dreamstream.v1 API: dream.proto and the stubs generated from it (see tests/test_proto.py)."""
