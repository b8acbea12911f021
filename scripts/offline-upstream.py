#!/usr/bin/env python3
"""A local stand-in for Open-Meteo, for trying the weather example on a machine without internet.

It makes a throwaway CA and certificate with openssl, serves Open-Meteo's documented response
shapes over HTTPS on 127.0.0.1:9443, and prints the `keyhole serve` flags that send the weather
plugin's requests here. The plugin itself runs unchanged.
"""

import json
import ssl
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

PORT = 9443
HOSTS = ["api.open-meteo.com", "geocoding-api.open-meteo.com"]
PLACES = {
    "berlin": {"name": "Berlin", "country": "Germany", "latitude": 52.52437, "longitude": 13.41053},
    "paris": {"name": "Paris", "country": "France", "latitude": 48.85341, "longitude": 2.3488},
}


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert = (folder / n for n in ["ca.key", "ca.pem", "key.pem", "csr.pem", "cert.pem"])
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=keyhole offline stand-in CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    extensions = folder / "ext.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1," + ",".join(f"DNS:{h}" for h in HOSTS))
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", extensions)
    return ca, cert, key


class OpenMeteo(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/v1/search":
            place = PLACES.get(query.get("name", "").lower())
            body = {"results": [place], "generationtime_ms": 0.4} if place else {"generationtime_ms": 0.3}
        elif url.path == "/v1/forecast":
            imperial = query.get("temperature_unit") == "fahrenheit"
            body = {
                "latitude": float(query.get("latitude", 0)),
                "longitude": float(query.get("longitude", 0)),
                "current_units": {"time": "iso8601", "interval": "seconds",
                                  "temperature_2m": "°F" if imperial else "°C",
                                  "wind_speed_10m": "mp/h" if imperial else "km/h",
                                  "weather_code": "wmo code"},
                "current": {"time": "2026-12-03T12:00", "interval": 900,
                            "temperature_2m": 38.1 if imperial else 3.4,
                            "wind_speed_10m": 7.0 if imperial else 11.2, "weather_code": 3},
            }
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    folder = Path(tempfile.mkdtemp(prefix="keyhole-offline-"))
    ca, cert, key = make_certificates(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", PORT), OpenMeteo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    flags = " ".join(f"--egress-override https://{h}=https://127.0.0.1:{PORT}" for h in HOSTS)
    print(f"Open-Meteo stand-in on https://127.0.0.1:{PORT}. Start keyhole with:\n"
          f"  scripts/demo {flags} --egress-ca {ca}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
