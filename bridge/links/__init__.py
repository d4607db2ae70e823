"""Device links: move bytes between chargers and the gateway, nothing else."""
