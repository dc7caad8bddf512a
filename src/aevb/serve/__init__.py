"""The latent explorer: ``create_app(run)`` builds the FastAPI app that ``aevb serve`` runs."""
