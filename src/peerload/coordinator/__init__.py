"""The coordinator: ModelExpress-compatible P2P metadata service (`serve(settings)`)."""
