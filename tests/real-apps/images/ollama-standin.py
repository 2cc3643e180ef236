#!/usr/bin/python3
"""Ollama stand-in: `ollama serve` answers Ollama's read-only API; `ollama list` asks it.

Every request is logged on stdout with its client (`GET /api/version from 127.0.0.1 by
Python/3.11 aiohttp/3.13.5`), so a test can see which client really reached it.
"""
import http.server
import json
import os
import sys
import urllib.request

VERSION = "0.21.0-berth-standin"
MODELS = [{
    "name": "berth-standin:latest", "model": "berth-standin:latest",
    "modified_at": "2026-01-01T00:00:00Z", "size": 1, "digest": "0" * 64,
    "details": {"format": "gguf", "family": "standin", "parameter_size": "1", "quantization_level": "Q4_0"},
}]


def host():
    h = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    return h.split("://")[-1]


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        agent = self.headers.get("User-Agent", "-")
        print(f"{self.command} {self.path} from {self.client_address[0]} by {agent}", flush=True)
        path = self.path.split("?")[0]
        if path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/api/version":
            self.answer({"version": VERSION})
        elif path == "/api/tags":
            self.answer({"models": MODELS})
        elif path == "/api/ps":
            self.answer({"models": []})
        else:
            self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if cmd == "serve":
        addr, _, port = host().rpartition(":")
        http.server.ThreadingHTTPServer((addr or "0.0.0.0", int(port)), Handler).serve_forever()
    elif cmd == "list":
        with urllib.request.urlopen(f"http://{host()}/api/tags", timeout=5) as r:
            for m in json.load(r)["models"]:
                print(m["name"])
    elif cmd in ("-v", "--version"):
        print(f"ollama version is {VERSION}")
    else:
        sys.exit(f"ollama stand-in: {cmd} is not supported")


if __name__ == "__main__":
    main()
