"""Human-in-the-loop trainer: entropy-sampled queries, saliency review, masks that enter the loss."""
