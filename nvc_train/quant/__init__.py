"""Quantization of the hyperprior decoding path: exact integer arithmetic, QAT fake-quant,
conversion to frozen integer decoders, and the integer checkpoint format."""
