"""Try a succeeded job's adapter: POST /v1/fine_tuning/jobs/{id}/try and its polling."""
