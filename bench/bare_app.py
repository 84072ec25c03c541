"""The baseline server of bench/advice.py: a bare FastAPI endpoint that returns a
precomputed JSON body of the same size as a recommendation, nothing else."""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response

BODY = os.environ.get("LORACLE_BENCH_BODY", "{}").encode()

app = FastAPI()


@app.post("/v1/recommendations")
async def bare(request: Request) -> Response:
    await request.body()
    return Response(content=BODY, media_type="application/json")
