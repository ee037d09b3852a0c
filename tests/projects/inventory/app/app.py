"""The inventory: items and their counts in PostgreSQL, a connection per request."""

import os

import psycopg2
from flask import Flask, g, jsonify, request

app = Flask(__name__)
VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"


def db():
    if "db" not in g:
        g.db = psycopg2.connect(host=os.environ["DATABASE_HOST"],
                                dbname=os.environ["DATABASE_NAME"],
                                user=os.environ["DATABASE_USER"],
                                password=os.environ["DATABASE_PASSWORD"],
                                connect_timeout=5)
    return g.db


@app.teardown_appcontext
def close_db(_exc):
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


@app.before_request
def broken_release():
    # The "broken" build: up and listening, but every answer is an error.
    if BROKEN:
        return jsonify(error="this release is broken"), 500
    return None


@app.get("/items")
def items():
    with db(), db().cursor() as cur:
        cur.execute("SELECT name, count FROM items ORDER BY name")
        return jsonify(items={name: count for name, count in cur.fetchall()})


@app.put("/items/<name>")
def put_item(name):
    with db(), db().cursor() as cur:
        cur.execute("INSERT INTO items (name, count) VALUES (%s, %s) ON CONFLICT (name)"
                    " DO UPDATE SET count = EXCLUDED.count", (name, int(request.form["count"])))
    return jsonify(ok=True)


@app.get("/health")
def health():
    with db(), db().cursor() as cur:
        cur.execute("SELECT 1")
    return jsonify(status="healthy", version=VERSION)


def create_schema():
    with db(), db().cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY, count INT NOT NULL)")


with app.app_context():
    create_schema()
