"""Bitstreams: the container format and encode/decode of frame sequences."""
