"""The guestbook: entries kept in MariaDB, one connection shared by every request thread
(opened at the first request, as many small Flask apps do)."""

import os

import pymysql
from flask import Flask, jsonify, request

app = Flask(__name__)
VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"
_db = None


def db():
    global _db
    if _db is None:
        with open(os.environ["DB_PASSWORD_FILE"]) as f:
            password = f.read().strip()
        _db = pymysql.connect(host=os.environ["DB_HOST"], user=os.environ["DB_USER"],
                              password=password, database=os.environ["DB_NAME"],
                              autocommit=True)
        with _db.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS entries ("
                        " id INT AUTO_INCREMENT PRIMARY KEY, text VARCHAR(200) NOT NULL)")
    return _db


@app.before_request
def broken_release():
    # The "broken" build: up and listening, but every answer is an error.
    if BROKEN:
        return jsonify(error="this release is broken"), 500
    return None


@app.get("/entries")
def entries():
    with db().cursor() as cur:
        cur.execute("SELECT text FROM entries ORDER BY id")
        return jsonify(entries=[row[0] for row in cur.fetchall()])


@app.post("/entries")
def sign():
    with db().cursor() as cur:
        cur.execute("INSERT INTO entries (text) VALUES (%s)", (request.form["text"],))
    return jsonify(ok=True), 201


@app.get("/health")
def health():
    with db().cursor() as cur:
        cur.execute("SELECT 1")
    return jsonify(status="healthy", version=VERSION)
