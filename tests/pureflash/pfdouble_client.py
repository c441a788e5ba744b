"""Helpers for tests that use pfdouble, the PureFlash conformance double.

    with PfDouble(tmpdir, shard_order=20) as pf:
        pf.s5c('create_volume', volume_name='v', size='4M')
        conn = pf.connect('v')          # opens it, handshakes with store 0
        conn.write(0, b'x' * 4096)
        assert conn.read(0, 4096) == b'x' * 4096

PfDouble runs pfdouble.py as a subprocess; .conductor is "127.0.0.1:PORT",
.store_port the stores' common port, .ctl()/.s5c() call its HTTP APIs.
RawConn is a minimal client of the data protocol (PROTOCOL.md), for the
double's own tests: blocking, one connection, no retries.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
HANDSHAKE = struct.Struct('<hhhhQihHQ')
HEAD = struct.Struct('<BBHIQQIHHQIIQQ')
REPLY = struct.Struct('<HHHHIIQQ')
OP_WRITE, OP_READ = 0x01, 0x02
SNAP_HEAD = 0xFFFFFFFF
ST_OK, ST_REOPEN, ST_NOT_PRIMARY, ST_AIOERROR = 0, 0x4000, 0xC0, 0xC4
MAX_IO = 128 * 1024


class StatusError(Exception):
    """A reply with a nonzero status."""

    def __init__(self, status):
        super().__init__('status 0x%x' % status)
        self.status = status


class PfDouble:
    """Start pfdouble.py on DIR; stop it on exit (SIGTERM)."""

    def __init__(self, directory, stores=2, shard_order=36, max_depth=128,
                 timeout=30):
        self.dir = directory
        self.args = ['--stores', str(stores), '--shard-order',
                     str(shard_order), '--max-depth', str(max_depth)]
        self.timeout = timeout
        self.proc = None
        self.log_path = os.path.join(directory, 'pfdouble.log')

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        ready = os.path.join(self.dir, 'ready.json')
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'pfdouble.py'), '--dir',
             self.dir, '--ready', ready] + self.args,
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('pfdouble did not start:\n' + self.log())
            time.sleep(0.02)
        with open(ready) as f:
            info = json.load(f)
        self.conductor = info['conductor']
        self.store_port = info['store_port']
        self.stores = info['stores']
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self):
        with open(self.log_path, errors='replace') as f:
            return f.read()[-4000:]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _get(self, api, op, params):
        query = urllib.parse.urlencode(dict(params, op=op))
        url = 'http://%s/%s/?%s' % (self.conductor, api, query)
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.load(reply)

    def s5c(self, op, **params):
        """A conductor call; the parsed JSON reply."""
        return self._get('s5c', op, params)

    def ctl(self, op, **params):
        """A control call of the double; the parsed JSON reply."""
        return self._get('ctl', op, params)

    def connect(self, volume_name, store=0, snapshot_name='', depth=32):
        """Open the volume and handshake with store (an index)."""
        info = self.s5c('open_volume', volume_name=volume_name,
                        snapshot_name=snapshot_name)
        if info['ret_code'] != 0:
            raise RuntimeError('open_volume: %r' % info)
        return RawConn(self.stores[store], self.store_port, info, depth)


class RawConn:
    """One data connection: handshake, then requests and replies."""

    def __init__(self, host, port, info, depth=32, protocol_ver=1):
        self.info = info
        self.vol_id = info['volume_id']
        self.meta_ver = info['meta_ver']
        self.snap_seq = (SNAP_HEAD if info['snap_seq'] < 0
                         else info['snap_seq'])
        self.order = info['shard_lba_cnt_order']
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(HANDSHAKE.pack(0, depth, 0, 0, self.vol_id, 0,
                                         protocol_ver, 0, 0))
        reply = HANDSHAKE.unpack(self.recv_exact(HANDSHAKE.size))
        self.depth, self.hs_result = reply[1], reply[6]
        self.next_id = 0
        self.pending = {}       # (command_id, command_seq) -> (op, length)

    def close(self):
        self.sock.close()

    def recv_exact(self, n):
        buf = b''
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError('connection closed after %d of %d bytes'
                               % (len(buf), n))
            buf += chunk
        return buf

    def submit(self, op, offset, length, data=None, **fields):
        """Send one request; fields override vol_id, meta_ver, snap_seq,
        command_id.  Returns its (command_id, command_seq)."""
        self.next_id += 1
        cmd_id = fields.get('command_id', self.next_id & 0xFFFF)
        seq = self.next_id
        head = HEAD.pack(op, 0, cmd_id, fields.get('snap_seq', self.snap_seq),
                         fields.get('vol_id', self.vol_id), 0, 0,
                         fields.get('meta_ver', self.meta_ver), 0, offset,
                         length, seq, 0, 0)
        self.sock.sendall(head + (data or b''))
        self.pending[(cmd_id, seq)] = (op, length)
        return cmd_id, seq

    def reply(self):
        """Receive one reply: (status, command_id, command_seq, data)."""
        status, _, cmd_id, _, seq, _, _, _ = REPLY.unpack(
            self.recv_exact(REPLY.size))
        op, length = self.pending.pop((cmd_id, seq))
        data = b''
        if op == OP_READ and status == ST_OK:
            data = self.recv_exact(length)
        return status, cmd_id, seq, data

    def _pieces(self, offset, length):
        """Split at shard boundaries and at 128 KiB."""
        while length:
            shard_end = ((offset >> self.order) + 1) << self.order
            n = min(length, MAX_IO, shard_end - offset)
            yield offset, n
            offset, length = offset + n, length - n

    def write(self, offset, data):
        for off, n in self._pieces(offset, len(data)):
            pos = off - offset
            self.submit(OP_WRITE, off, n, data[pos:pos + n])
            status = self.reply()[0]
            if status:
                raise StatusError(status)

    def read(self, offset, length):
        out = []
        for off, n in self._pieces(offset, length):
            self.submit(OP_READ, off, n)
            status, _, _, data = self.reply()
            if status:
                raise StatusError(status)
            out.append(data)
        return b''.join(out)
