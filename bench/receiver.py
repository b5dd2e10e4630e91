"""A webhook receiver for benchmarks, run as its own process so it does not share our GIL.

    python -m bench.receiver --ports 9001,9002 --delay 0.2 [--hang-ports 9003]

Answers 204 after `--delay` seconds; on a hang port it never answers.
Prints "ready" once every port listens.
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog, read when the server binds: the default of 5 drops the
    # connections of a burst of deliveries, as a production receiver would not.
    request_queue_size = 1024


def serve(port: int, delay_seconds: float, hang: bool) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            if hang:
                time.sleep(3600)
            time.sleep(delay_seconds)
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", default="")
    parser.add_argument("--hang-ports", default="")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    for port in filter(None, args.ports.split(",")):
        serve(int(port), args.delay, hang=False)
    for port in filter(None, args.hang_ports.split(",")):
        serve(int(port), 0, hang=True)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
