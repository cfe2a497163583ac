"""A TLS-terminating TCP proxy for the tests: clients speak TLS to it, it speaks plain
TCP to the server behind it. nx-27017 (the MongoDB-compatible test server) has no
TLS of its own; this puts a real TLS endpoint with a test CA's certificate in front
of it, so the host's MongoDB TLS options are exercised against a real handshake.

Usage: tls_proxy.py --listen-port P --target HOST:PORT --cert C --key K [--client-ca CA]
With --client-ca, clients must present a certificate signed by that CA.
Prints "ready PORT" on stdout once listening.
"""
import argparse
import asyncio
import ssl
import sys


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    if a.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.client_ca)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError as e:
            print(f"cannot reach {a.target}: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port, ssl=ctx)
    print(f"ready {a.listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
