"""The whale song detector: audio decoding, synthetic data, model, training and detection."""
