#!/usr/bin/env python3
"""TLS in front of a plaintext TCP server, as a cloud load balancer or a service mesh puts it.

nisshi 0.7 takes --cert/--key but never uses them (its broker serves the raw TCP stream), so
scripts/infra.sh puts this in front of it to give tests and the local stack a broker that is
reached over TLS only. Python's ssl module is OpenSSL: an implementation independent of the
rustls our clients use, which is what a TLS test should talk to.

    tls_terminator.py --listen PORT --forward PORT --cert PEM --key PEM [--client-ca PEM]

With --client-ca, clients must present a certificate signed by that CA (mutual TLS).
Prints "listening on 127.0.0.1:PORT" once it accepts connections.
"""

import argparse
import asyncio
import ssl
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass


async def serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        context.load_verify_locations(args.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", args.forward)
        except OSError as e:
            print(f"cannot reach 127.0.0.1:{args.forward}: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen, ssl=context)
    print(f"listening on 127.0.0.1:{args.listen} -> 127.0.0.1:{args.forward}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--forward", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
