"""A TCP server for the raw-TCP tests. It prints its port, then serves each connection:

  server-first  sends an SSH-like banner at once, then echoes what it reads
  client-first  echoes what it reads (the client speaks first)
  silent        accepts and says nothing, until the client goes away

When the client half-closes, the server finishes echoing and closes too. It prints
"accepted" for each connection (after a server-first banner is sent), so a test knows.
"""

import socket
import sys
import threading

BANNER = b"SSH-2.0-OpenSSH_9.2 flowgate-test\r\n"


def serve(conn: socket.socket, mode: str) -> None:
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if mode != "silent":
                conn.sendall(data)


def main() -> None:
    mode = sys.argv[1]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        if mode == "server-first":
            conn.sendall(BANNER)
        print("accepted", flush=True)
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
