"""Behaves like the existing Chat4All Python CLI: `websocket-client`, the token in the query
string, a JSON ping; then the backend publishes. Prints one JSON line per received message.
Arguments: URL (ws:// or wss://), publish URL, user, and for wss:// the CA file to trust."""
import json
import sys
import threading
import time
import urllib.request

import websocket  # websocket-client, as the CLI uses

url, publish_url, user = sys.argv[1], sys.argv[2], sys.argv[3]
# wss://: verify the gateway's certificate (and its name) against this CA only.
sslopt = {"ca_certs": sys.argv[4]} if len(sys.argv) > 4 else None
received = []
opened = threading.Event()


def on_open(ws):
    # json.dumps renders {"type": "ping"} with a space, exactly as the CLI sends it.
    ws.send(json.dumps({"type": "ping"}))
    opened.set()


ws = websocket.WebSocketApp(url, on_open=on_open, on_message=lambda ws, m: received.append(m))
thread = threading.Thread(target=ws.run_forever, kwargs={"ping_interval": 0, "sslopt": sslopt})
thread.start()
if not opened.wait(5):
    sys.exit("the connection did not open")
time.sleep(0.3)
body = json.dumps({"user_id": user, "payload": {"text": "hi from the backend"}}).encode()
request = urllib.request.Request(publish_url, data=body, headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=5).read().decode(), flush=True)
deadline = time.time() + 5
while len(received) < 3 and time.time() < deadline:
    time.sleep(0.05)
ws.close()
thread.join(5)
for message in received:
    print(message, flush=True)
