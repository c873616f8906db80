"""Files shared by the codec and the data pipeline: video I/O, colour conversion, atomic writes, digests.

Imports only the standard library, numpy, torch and PyAV, never ``nvc_train.codec`` or
``nvc_train.data``, so both can build on it.
"""
