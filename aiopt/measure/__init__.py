"""Measurement, one layer below every step: quality of outputs (accuracy, agreement, cosine)
and latency. compress/, export/, bench/ and optimize/ all measure through here."""
