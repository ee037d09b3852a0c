"""The counter: every visit of / adds one to a Redis key and shows the total."""

import os

import redis
from flask import Flask, jsonify

app = Flask(__name__)
cache = redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=6379)
VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"


@app.before_request
def broken_release():
    # The "broken" build: up and listening, but every answer is an error.
    if BROKEN:
        return jsonify(error="this release is broken"), 500
    return None


@app.get("/")
def visit():
    hits = cache.incr("hits")
    return f"Hello from {VERSION}: {hits} visits.\n"


@app.get("/hits")
def hits():
    return jsonify(hits=int(cache.get("hits") or 0))


@app.get("/health")
def health():
    cache.ping()
    return jsonify(status="healthy", version=VERSION)


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000, threaded=True)
