#!/usr/bin/env python3
"""HTTP/2 conformance cases against tinyscale's own HTTP/2 server driver,
with Python's `h2` package (an independent implementation) as the client.

Run by tests/h2_conformance.rs, which serves on 127.0.0.1:PORT:
  POST /echo      -> 200, the request body
  POST /big?n=N   -> 200, N bytes (byte i = i % 251)
  POST /stream    -> 200, an 8-byte chunk every 20 ms until the stream is reset
Each case prints "ok NAME"; any failure raises (non-zero exit).
"""
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, SettingsFrame

PORT = int(sys.argv[1])
DEADLINE = 20.0  # per case; only catches hangs


def pattern(n):
    return bytes(i % 251 for i in range(n))


class Client:
    def __init__(self, settings=None):
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=DEADLINE)
        self.send_failed = False
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.bodies = {}
        self.status = {}
        self.ended = set()
        self.resets = {}
        self.goaway = None
        self.closed = False
        self.auto_ack = True
        self.data_frames = []  # (stream, flow-controlled length)

    def flush(self):
        out = self.conn.data_to_send()
        if out and not self.send_failed:
            try:
                self.sock.sendall(out)
            except (ConnectionResetError, BrokenPipeError):
                # The server closed after a GOAWAY while we were still
                # sending (its kernel answers unread bytes with RST). What it
                # sent before is still queued for us: keep reading it.
                self.send_failed = True

    def headers(self, path, extra=()):
        return [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", path)] + list(extra)

    def request(self, path, body=b"", extra=(), end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, extra), end_stream=(end and not body))
        self.flush()
        if body:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid, body, end=True, pad=0):
        """Sends under flow control, reading while the window is shut."""
        while body:
            if sid in self.resets or sid in self.status and self.status[sid] >= 400:
                return
            # Padding (and its length byte) counts against the windows too.
            over = pad + 1 if pad else 0
            win = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size) - over
            if win <= 0:
                self.pump_once()
                continue
            chunk, body = body[:win], body[win:]
            self.conn.send_data(sid, chunk, end_stream=(end and not body), pad_length=pad or None)
            self.flush()

    def pump_once(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise EOFError("server closed the connection")
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.status[ev.stream_id] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                self.data_frames.append((ev.stream_id, ev.flow_controlled_length))
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self.flush()

    def until(self, cond, what):
        end = time.time() + DEADLINE
        while not cond():
            if time.time() > end:
                raise TimeoutError(what)
            self.pump_once()

    def response(self, sid):
        self.until(lambda: sid in self.ended or sid in self.resets, f"response on stream {sid}")
        return self.status.get(sid), bytes(self.bodies.get(sid, b""))


def case_echo_with_padding_and_windows():
    # 300 KB: several times the server's 64 KiB stream window, so the upload
    # only completes if the server gives the window back as it buffers.
    c = Client()
    body = pattern(300_000)
    sid = c.request("/echo", end=False)
    c.send_body(sid, body, pad=255)
    status, got = c.response(sid)
    assert status == 200 and got == body, (status, len(got))
    print("ok echo_with_padding_and_windows")


def case_window_zero_and_settings_mid_stream():
    # Our stream window starts at 0: the server may send HEADERS but no DATA.
    c = Client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.auto_ack = False
    n = 200_000
    sid = c.request("/big?n=%d" % n)
    c.until(lambda: sid in c.status, "response headers with a zero window")
    c.sock.settimeout(0.5)
    try:
        c.pump_once()
    except socket.timeout:
        pass
    c.sock.settimeout(DEADLINE)
    assert not c.bodies.get(sid), "DATA sent into a zero window"
    # Open the stream window 1000 bytes at a time: never more may arrive.
    for step in range(5):
        c.conn.increment_flow_control_window(1000, stream_id=sid)
        c.flush()
        c.until(lambda: len(c.bodies.get(sid, b"")) >= 1000 * (step + 1), "1000-byte step")
        assert len(c.bodies[sid]) == 1000 * (step + 1), len(c.bodies[sid])
    # SETTINGS mid-stream: raising the initial window applies to the open
    # stream at once (RFC 9113 6.9.2); the connection window is still 65,535
    # minus what arrived, so the rest follows as we acknowledge.
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    c.flush()
    c.auto_ack = True
    got_before = len(c.bodies[sid])
    c.conn.acknowledge_received_data(got_before, sid)
    c.flush()
    status, got = c.response(sid)
    assert status == 200 and got == pattern(n), (status, len(got))
    assert max(l for s, l in c.data_frames if s == sid) <= 16384
    print("ok window_zero_and_settings_mid_stream")


def case_continuation_raw():
    # A header block split over HEADERS + 2 CONTINUATION frames, Huffman and
    # incremental indexing on (the hpack package's defaults), then a second
    # request that refers to the dynamic table entries the first one made.
    s = socket.create_connection(("127.0.0.1", PORT), timeout=DEADLINE)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
    enc = hpack.Encoder()
    dec = hpack.Decoder()
    results = {}
    for sid in (1, 3):
        block = enc.encode(
            [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", "/echo"),
             ("x-custom", "value-%d" % sid), ("user-agent", "h2-conformance")]
        )
        a, b = len(block) // 3, 2 * len(block) // 3
        frames = [HeadersFrame(sid, data=block[:a]), ContinuationFrame(sid, data=block[a:b])]
        last = ContinuationFrame(sid, data=block[b:])
        last.flags.add("END_HEADERS")
        frames.append(last)
        body = DataFrame(sid, data=b"cont-%d" % sid, pad_length=7)
        body.flags.add("PADDED")
        body.flags.add("END_STREAM")
        frames.append(body)
        s.sendall(b"".join(f.serialize() for f in frames))
    buf = b""
    end = time.time() + DEADLINE
    while len(results) < 2 or any(not r.get("end") for r in results.values()):
        assert time.time() < end, "no responses to CONTINUATION requests"
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
        while len(buf) >= 9:
            ln = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + ln:
                break
            typ, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big")
            payload, buf = buf[9:9 + ln], buf[9 + ln:]
            if typ == 1:
                hdrs = dict(dec.decode(payload))
                results.setdefault(sid, {})["status"] = hdrs[":status"]
            elif typ == 0:
                r = results.setdefault(sid, {})
                r["body"] = r.get("body", b"") + payload
            elif typ == 7:
                raise AssertionError("GOAWAY on a valid CONTINUATION request")
            if typ in (0, 1) and flags & 1:
                results.setdefault(sid, {})["end"] = True
    for sid in (1, 3):
        assert results[sid]["status"] == "200", results
        assert results[sid]["body"] == b"cont-%d" % sid, results
    print("ok continuation_raw")


def case_huge_header_lists():
    # 20 KB of header values: over MAX_HEADER_LIST_SIZE (16 KiB), so 431, and
    # the block needs CONTINUATION (> 16,384-byte frames); the connection
    # stays usable.
    c = Client()
    big = [("x-big-%d" % i, "v" * 1000) for i in range(20)]
    sid = c.request("/echo", b"after", extra=big)
    status, _ = c.response(sid)
    assert status == 431, status
    sid2 = c.request("/echo", b"still here")
    assert c.response(sid2) == (200, b"still here")
    # 100 KB: past what we buffer of a header block at all: GOAWAY.
    c2 = Client()
    huge = [("x-huge-%d" % i, "v" * 1000) for i in range(100)]
    c2.request("/echo", b"", extra=huge)
    try:
        c2.until(lambda: c2.goaway is not None, "GOAWAY for a 100 KB header block")
    except EOFError:
        pass
    assert c2.goaway == 0xB, c2.goaway  # ENHANCE_YOUR_CALM
    print("ok huge_header_lists")


def case_rst_on_live_stream():
    c = Client()
    sid = c.request("/stream")
    c.until(lambda: len(c.bodies.get(sid, b"")) >= 24, "three chunks of the live stream")
    c.conn.reset_stream(sid, error_code=8)  # CANCEL
    c.flush()
    # The connection and the other streams are unaffected.
    sid2 = c.request("/echo", b"after reset")
    assert c.response(sid2) == (200, b"after reset")
    print("ok rst_on_live_stream")


def case_body_over_budget_and_stream_limit():
    c = Client()
    sid = c.request("/echo", end=False)
    c.send_body(sid, pattern(1_200_000))
    status, _ = c.response(sid)
    assert status == 413, status
    sid2 = c.request("/echo", b"small")
    assert c.response(sid2) == (200, b"small")
    # The ninth concurrent stream is refused; the eight others are served.
    c3 = Client()
    sids = [c3.request("/stream") for _ in range(9)]
    c3.until(lambda: sids[8] in c3.resets, "REFUSED_STREAM for the ninth stream")
    assert c3.resets[sids[8]] == 7, c3.resets
    c3.until(lambda: all(len(c3.bodies.get(s, b"")) >= 8 for s in sids[:8]), "eight live streams")
    print("ok body_over_budget_and_stream_limit")


def case_ping():
    c = Client()
    c.conn.ping(b"12345678")
    c.flush()
    got = []
    end = time.time() + DEADLINE
    while not got:
        assert time.time() < end
        data = c.sock.recv(65536)
        assert data
        for ev in c.conn.receive_data(data):
            if isinstance(ev, h2.events.PingAckReceived):
                got.append(ev.ping_data)
        c.flush()
    assert got == [b"12345678"], got
    print("ok ping")


for name, fn in list(globals().items()):
    if name.startswith("case_"):
        fn()
print("all ok")
