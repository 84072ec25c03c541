"""GET /v1/workers: the fleet."""
