"""The only place hooks live: layer resolution, activations, gradients, learned gates, STNs."""
