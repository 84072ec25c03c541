"""/v1/worker/: the files a remote worker moves (api/worker_files/service.py says how)."""
