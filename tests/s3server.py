"""A real S3 API on 127.0.0.1 for tests and the cluster check (moto's server, in-memory buckets).

    python -m tests.s3server --port 9000 --bucket ccr     # serves until killed

moto (5.2) answers CompleteMultipartUpload with a `<CompleteMultipartUploadResponse>` root element where
S3 sends `<CompleteMultipartUploadResult>`; Arrow's S3 filesystem (which Ray and ccr write through)
reads any other root element as an error embedded in a 200 response and fails the upload. A small
WSGI middleware renames that element; nothing else is changed.
"""

from __future__ import annotations

import argparse
import os
import threading

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ccr-test", "AWS_SECRET_ACCESS_KEY": "ccr-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _fix_complete_multipart(app):
    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return app(environ, start_response)
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in captured["headers"]]
        start_response(captured["status"], headers)
        return [body]

    return wrapped


class S3Server:
    """moto's S3 on 127.0.0.1 in a thread; `uri(bucket, prefix)` is a pyarrow URI for it."""

    def __init__(self, port: int = 0):
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
        inner = _fix_complete_multipart(DomainDispatcherApplication(create_backend_app))
        self.get_delay = 0.0  # seconds each GET of an object waits (tests: a staging slow enough to be killed)
        self.gets = 0  # object GETs served

        def app(environ, start_response):
            if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO", "/").count("/") >= 2 \
                    and "list-type" not in environ.get("QUERY_STRING", ""):
                self.gets += 1
                if self.get_delay:
                    import time

                    time.sleep(self.get_delay)
            return inner(environ, start_response)

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def make_bucket(self, bucket: str) -> None:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                          access_key=os.environ["AWS_ACCESS_KEY_ID"],
                          secret_key=os.environ["AWS_SECRET_ACCESS_KEY"]).create_dir(bucket)

    def uri(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}".rstrip("/") + f"?endpoint_override={self.endpoint}&scheme=http"


def main() -> None:
    import logging
    import time

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", action="append", default=[])
    a = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    s = S3Server(a.port).start()
    for b in a.bucket:
        s.make_bucket(b)
    print(f"s3 server on {s.endpoint}, buckets {a.bucket}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
