"""``nvc-train cross-check``: decode the same streams in other environments and print the matrix."""
