"""The ``loracle`` command line: the top layer, over the advisor, the API's client side, the
worker and the memory tracer (see `cli.main`)."""
