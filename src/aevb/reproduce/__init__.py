"""The paper's experiments as functions that write CSV + PNG (``aevb reproduce ...``).

- ``figure2``: AEVB vs wake-sleep, lower bound per datapoint vs training samples evaluated.
- ``figure3``: estimated marginal likelihood, AEVB vs wake-sleep vs Monte Carlo EM (HMC).
- ``iwae_table``: the IWAE paper's one-stochastic-layer VAE, test log p(x) with k = 5000.
"""
