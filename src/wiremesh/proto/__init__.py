"""Generated protobuf code for proto/*.proto (``python tools/gen_proto.py``); do not edit."""
