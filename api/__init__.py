"""The HTTP API: thin routes over the advisor and the job store."""
