"""The channel atlas: the one-pass accumulator over a collection, its pictures and its page."""
