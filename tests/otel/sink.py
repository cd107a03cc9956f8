"""An OTLP receiver for the end-to-end tests, built on oteltest's otelsink (PyPI).

otelsink's own command prints Python reprs on fixed ports; this runs the same gRPC and HTTP
servers on the ports given and writes every request it receives as one JSON line
(protobuf's JSON mapping) to the file given: {"signal": "metrics"|"traces", "request": {...}}.

    sink.py OUT.jsonl GRPC_PORT HTTP_PORT
"""

import json
import logging
import signal
import sys
import threading

from google.protobuf.json_format import MessageToDict
from oteltest.sink import GrpcSink, HttpSink
from oteltest.sink.handler import RequestHandler


class JsonLinesHandler(RequestHandler):
    def __init__(self, path):
        self.out = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, signal_name, request):
        line = json.dumps({"signal": signal_name, "request": MessageToDict(request)})
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def handle_logs(self, request, headers):
        self.write("logs", request)

    def handle_metrics(self, request, headers):
        self.write("metrics", request)

    def handle_trace(self, request, headers):
        self.write("traces", request)


def main():
    out, grpc_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING)
    logger = logging.getLogger("sink")
    handler = JsonLinesHandler(out)
    grpc_sink = GrpcSink(handler, logger, port=grpc_port)
    http_sink = HttpSink(handler, logger, port=http_port)
    grpc_sink.start()
    http_sink.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    grpc_sink.stop()
    http_sink.stop()


if __name__ == "__main__":
    main()
