"""Codec configurations small enough for tests and quick benchmarks: random weights, real shapes and ids
(8 codebooks x 2048). Torch-free."""

TINY_MIMI = dict(
    hidden_size=64,
    num_filters=8,
    num_hidden_layers=1,
    intermediate_size=128,
    num_attention_heads=2,
    num_key_value_heads=2,
    codebook_dim=16,
    vector_quantization_hidden_dimension=16,
    upsample_groups=64,
)
"""transformers' ``MimiConfig`` overrides (``CodecConfig(random_init=True, config_overrides=TINY_MIMI)``)."""

TINY_ENCODEC = dict(num_filters=4, hidden_size=16, num_lstm_layers=1)
"""transformers' ``EncodecConfig`` overrides."""
