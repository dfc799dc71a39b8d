"""jacosr: open-set recognition by the Jacobian norm of the representation (JAX / Flax NNX)."""
