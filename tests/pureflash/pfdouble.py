#!/usr/bin/env python3
"""pfdouble: a conformance double for PureFlash's client protocol.

This is NOT PureFlash, and contains none of its code.  It is a test server
written for this project from the protocol facts in PROTOCOL.md (the
project's notes on PureFlash's client-visible protocol): a conductor that
answers the HTTP calls a client makes, and stores that speak the TCP data
protocol, so that CI can test the client engine without a real cluster.
It adds a control API (/ctl/) to inject faults and to read statistics,
including the protocol violations it saw from the client.

Usage:
    pfdouble.py --dir DIR --ready FILE [--stores N] [--shard-order N]
                [--max-depth N]

Store k listens on 127.0.0.(k+1), all stores on one common port; the
conductor listens on 127.0.0.1 with an ephemeral port.  When everything
listens, FILE is written (atomically) with the JSON
    {"conductor": "127.0.0.1:PORT", "store_port": P,
     "stores": ["127.0.0.1", ...], "pid": PID}.
Volume data lives in sparse files DIR/<name>.img, metadata in
DIR/volumes.json, so both survive a restart with the same DIR; a
store accepts a handshake only for volumes opened since the start.

Conductor (GET /s5c/?op=..., JSON reply, ret_code 0 = OK, else a reason):
  create_volume&volume_name=&size=(bytes, or K/M/G/T)&rep_cnt=&host_id=
                [&shard_order=N: the double's own, small shards for tests]
  open_volume&volume_name=&snapshot_name=   delete_volume&volume_name=
  create_snapshot&volume_name=&snapshot_name=   list_volume
Control, the double's own (GET /ctl/?op=...):
  bump_meta_ver&volume_name=          set_primary&volume_name=&shard=&store=
  fault&store=K|all&kind=KIND&count=N[&delay_ms=D], KIND one of reopen,
      not_primary, aioerror, drop, slow, reorder, fragment, short (READs
      only), hs_reject (handshakes only), conductor_hang (the next
      open_volume answers after delay_ms; use store=all)
  stop_store&store=K   start_store&store=K   set_max_depth&depth=N
  stats (per store counters, and "violations": protocol errors seen)
  reset (faults, stats, max depth; restarts stopped stores; volumes stay)
"""

import argparse
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Wire formats: little-endian, packed (PROTOCOL.md).
HANDSHAKE = struct.Struct('<hhhhQihHQ')        # 32 bytes each way
HEAD = struct.Struct('<BBHIQQIHHQIIQQ')         # 64-byte request head
REPLY = struct.Struct('<HHHHIIQQ')              # 32-byte reply
assert (HANDSHAKE.size, HEAD.size, REPLY.size) == (32, 64, 32)

OP_WRITE, OP_READ = 0x01, 0x02
OP_NAMES = {OP_WRITE: 'WRITE', OP_READ: 'READ'}
ST_OK, ST_REOPEN, ST_NOT_PRIMARY, ST_AIOERROR = 0, 0x4000, 0xC0, 0xC4
SNAP_HEAD = 0xFFFFFFFF
SECTOR = 512
MAX_IO = 128 * 1024
MAX_WRITE_READ = 64 * 1024 * 1024   # a WRITE claiming more: drop the link
EINVAL, ENOENT, EEXIST = 22, 2, 17
FIRST_VOLUME_ID = 0x100010000       # above 2**32: catches 32-bit truncation
WORKERS = 16
REORDER_TIMEOUT = 2.0               # a held reply goes out anyway after this
MAX_VIOLATIONS = 1000               # kept per store; the total is counted

# Fault kinds for data requests that replace the reply by a status.
STATUS_FAULTS = {'reopen': ST_REOPEN, 'not_primary': ST_NOT_PRIMARY,
                 'aioerror': ST_AIOERROR}
FAULT_KINDS = set(STATUS_FAULTS) | {'drop', 'slow', 'reorder', 'fragment',
                                    'short', 'hs_reject', 'conductor_hang'}


class ApiError(Exception):
    """An HTTP API call failed: ret_code and reason go to the client."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def parse_size(text):
    """'4096', '10M', '1GiB' -> bytes (suffixes are powers of 1024)."""
    m = re.fullmatch(r'\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*', text or '')
    if not m:
        raise ApiError(EINVAL, 'bad size %r' % text)
    return int(m.group(1)) << (10 * ' KMGT'.index(m.group(2).upper() or ' '))


def int_param(params, name, default=None):
    value = params.get(name, '')
    if value == '':
        if default is None:
            raise ApiError(EINVAL, 'missing parameter ' + name)
        return default
    try:
        return int(value, 0)
    except ValueError:
        raise ApiError(EINVAL, 'bad %s %r' % (name, value)) from None


class Volumes:
    """Volume metadata (DIR/volumes.json) and data files (DIR/*.img)."""

    def __init__(self, directory, nstores, order):
        self.dir, self.nstores, self.order = directory, nstores, order
        self.lock = threading.RLock()
        self.fds = {}           # (volume id, snap seq or None) -> fd
        self.write_locks = {}   # volume id -> lock held by writes, snapshots
        self.prepared = set()   # ids opened since start ("prepared")
        self.meta_path = os.path.join(directory, 'volumes.json')
        os.makedirs(os.path.join(directory, 'snapshots'), exist_ok=True)
        self.vols, self.next_id = {}, FIRST_VOLUME_ID
        if os.path.exists(self.meta_path):
            with open(self.meta_path) as f:
                saved = json.load(f)
            self.vols, self.next_id = saved['volumes'], saved['next_id']
        self.by_id_map = {v['id']: v for v in self.vols.values()}

    def _save(self):
        tmp = self.meta_path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({'next_id': self.next_id, 'volumes': self.vols}, f,
                      indent=1)
        os.replace(tmp, self.meta_path)

    def _path(self, name, seq=None):
        if seq is None:
            return os.path.join(self.dir, name + '.img')
        # Snapshots in a folder of their own: no volume name can clash.
        return os.path.join(self.dir, 'snapshots', '%s.%d.img' % (name, seq))

    def get(self, name):
        vol = self.vols.get(name)
        if vol is None:
            raise ApiError(ENOENT, 'volume %r not found' % name)
        return vol

    def by_id(self, vol_id):
        return self.by_id_map.get(vol_id)

    def primary(self, vol, shard):
        return vol['primaries'].get(str(shard), 0) % self.nstores

    def store_ips(self, vol, shard):
        first = self.primary(vol, shard)
        order = [first] + [k for k in range(self.nstores) if k != first]
        return ','.join('127.0.0.%d' % (k + 1) for k in order)

    def write_lock(self, vol):
        with self.lock:
            return self.write_locks.setdefault(vol['id'], threading.Lock())

    def fd(self, vol, seq):
        """The fd of the head (seq None) or of snapshot seq, or None."""
        key = (vol['id'], seq)
        with self.lock:
            if key not in self.fds:
                if seq is not None and seq not in vol['snaps'].values():
                    return None
                self.fds[key] = os.open(self._path(vol['name'], seq),
                                        os.O_RDWR)
            return self.fds[key]

    def create(self, name, size, rep_cnt, order=None):
        if not name or '/' in name or name.startswith('.'):
            raise ApiError(EINVAL, 'bad volume name %r' % name)
        if size <= 0 or size % SECTOR:
            raise ApiError(EINVAL, 'size must be a positive multiple of 512')
        with self.lock:
            if name in self.vols:
                raise ApiError(EEXIST, 'volume %r already exists' % name)
            fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            vol = {'name': name, 'id': self.next_id, 'size': size,
                   'rep_cnt': rep_cnt, 'meta_ver': 1, 'snaps': {},
                   'next_snap': 1, 'primaries': {}}
            if order is not None:
                vol['order'] = order
            self.next_id += 1
            self.vols[name] = vol
            self.by_id_map[vol['id']] = vol
            self._save()
            return vol

    def delete(self, name):
        with self.lock:
            vol = self.get(name)
            del self.vols[name]
            del self.by_id_map[vol['id']]
            self.prepared.discard(vol['id'])
            self._save()
            # Open fds stay open (requests in flight may use them); the
            # files go, and a later volume of the same name gets new ones.
            for seq in [None] + list(vol['snaps'].values()):
                self.fds.pop((vol['id'], seq), None)
                try:
                    os.unlink(self._path(name, seq))
                except FileNotFoundError:
                    pass

    def snapshot(self, name, snap):
        if not snap:
            raise ApiError(EINVAL, 'missing snapshot_name')
        with self.lock:
            vol = self.get(name)
            if snap in vol['snaps']:
                raise ApiError(EEXIST, 'snapshot %r already exists' % snap)
            seq = vol['next_snap']
            with self.write_lock(vol):   # no write half-way through the copy
                subprocess.run(['cp', '--sparse=always', self._path(name),
                                self._path(name, seq)], check=True)
            vol['snaps'][snap] = seq
            vol['next_snap'] = seq + 1
            self._save()
            return seq

    def bump(self, name):
        with self.lock:
            vol = self.get(name)
            vol['meta_ver'] += 1
            self._save()
            return vol['meta_ver']

    def set_primary(self, name, shard, store):
        with self.lock:
            vol = self.get(name)
            if not 0 <= shard < self.nshards(vol):
                raise ApiError(EINVAL, 'no shard %d' % shard)
            if not 0 <= store < self.nstores:
                raise ApiError(EINVAL, 'no store %d' % store)
            vol['primaries'][str(shard)] = store
            self._save()

    def nshards(self, vol):
        order = self.order_of(vol)
        return (vol['size'] + (1 << order) - 1) >> order

    def order_of(self, vol):
        """The volume's shard order: --shard-order, unless its
        create_volume gave one (shard_order=, the double's own)"""
        return vol.get('order', self.order)


class Request:
    """One data request as received by a connection."""

    __slots__ = ('opcode', 'cmd_id', 'snap_seq', 'vol_id', 'meta_ver',
                 'offset', 'length', 'seq', 'no', 'held', 'released',
                 'pending')

    def __init__(self, raw):
        (self.opcode, _, self.cmd_id, self.snap_seq, self.vol_id, _, _,
         self.meta_ver, _, self.offset, self.length, self.seq, _,
         _) = HEAD.unpack(raw)
        self.no = 0             # receive order on its connection
        self.held = self.released = False
        self.pending = None     # a held reply that is ready to go

    def describe(self):
        name = OP_NAMES.get(self.opcode, 'opcode 0x%x' % self.opcode)
        return '%s cmd %d seq %d off %d len %d' % (
            name, self.cmd_id, self.seq, self.offset, self.length)


class Conn:
    """One client connection to a store: a reader thread, replies sent by
    the worker pool under send_lock so that they never interleave."""

    def __init__(self, store, sock, cid):
        self.store, self.double, self.sock, self.cid = (
            store, store.double, sock, cid)
        self.send_lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.inflight = self.received = 0
        self.held = []          # requests whose reply 'reorder' holds back
        self.dead = False
        self.vol_id, self.depth = None, 0

    def kill(self):
        """Wake and end the connection, from any thread."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self):
        try:
            if self._handshake():
                while not self.dead:
                    self._request(self._recv(HEAD.size))
        except (OSError, EOFError):
            pass
        except Exception:
            traceback.print_exc()
        finally:
            self.kill()
            with self.send_lock:    # no worker is sending on this fd now
                self.sock.close()
            with self.store.lock:
                self.store.conns.discard(self)

    def _recv(self, n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise EOFError
            got += k
        return buf

    def violation(self, what):
        self.store.violation('conn %d: %s' % (self.cid, what))

    def _handshake(self):
        (io_timeout, hsqsize, rsv0, rsv1, vol_id, rsv2, protocol_ver, rsv3,
         rsv4) = HANDSHAKE.unpack(self._recv(HANDSHAKE.size))
        store, vols = self.store, self.double.volumes
        result = EINVAL
        if self.double.take_fault(store.index, 'hs'):
            pass
        elif protocol_ver != 1:
            # A request head sent first has its opcode where io_timeout is.
            looks_like_request = (io_timeout & 0xFF) in OP_NAMES
            self.violation('request before handshake' if looks_like_request
                           else 'handshake protocol_ver %d' % protocol_ver)
        elif not 1 <= hsqsize <= 255:
            self.violation('handshake hsqsize %d not in 1..255' % hsqsize)
        elif not store.running:
            pass
        elif vols.by_id(vol_id) is None or vol_id not in vols.prepared:
            pass
        else:
            result = 0
            hsqsize = min(hsqsize, self.double.max_depth)
            self.vol_id, self.depth = vol_id, hsqsize
        # counted first: a client may ask for the stats once it has the reply
        store.count('handshakes_rejected' if result else 'handshakes_ok')
        self.sock.sendall(HANDSHAKE.pack(io_timeout, hsqsize, rsv0, rsv1,
                                         vol_id, rsv2, result, rsv3, rsv4))
        return result == 0

    def _request(self, raw):
        req = Request(raw)
        data = None
        if req.opcode == OP_WRITE:
            if req.length > MAX_WRITE_READ:
                self.violation(req.describe() + ': absurd length, closing')
                raise EOFError
            data = self._recv(req.length)
        with self.count_lock:
            self.received += 1
            self.inflight += 1
            req.no, inflight = self.received, self.inflight
        self.store.note_request(req, inflight)
        if inflight > self.depth:       # logged only, the request goes on
            self.violation('%s: %d in flight, granted depth %d'
                           % (req.describe(), inflight, self.depth))
        bad = self._check(req)
        fault = None
        if req.opcode in OP_NAMES:
            fault = self.double.take_fault(self.store.index, req.opcode)
        kind = fault and fault['kind']
        if kind == 'drop':
            raise EOFError              # run() closes, nothing is sent
        if kind == 'reorder':
            req.held = True
            with self.send_lock:
                self.held.append(req)
            timer = threading.Timer(REORDER_TIMEOUT, self._release, (req,))
            timer.daemon = True
            timer.start()
        self.double.pool.put((self, req, data, bad, fault))

    def _check(self, req):
        """Log the request's protocol violations; True if there are any."""
        problems = []
        if req.opcode not in OP_NAMES:
            problems.append('unknown opcode')
        else:
            if req.vol_id != self.vol_id:
                problems.append('vol_id 0x%x is not the handshake\'s 0x%x'
                                % (req.vol_id, self.vol_id))
            if req.offset % SECTOR or req.length % SECTOR:
                problems.append('offset or length not a multiple of 512')
            if req.length == 0 or req.length > MAX_IO:
                problems.append('length 0 or over 128 KiB')
            vol = self.double.volumes.by_id(self.vol_id)
            order = self.double.volumes.order_of(vol) if vol else 64
            end = req.offset + max(req.length, 1) - 1
            if vol is not None and req.offset + req.length > vol['size']:
                problems.append('beyond the volume size %d' % vol['size'])
            elif req.offset >> order != end >> order:
                problems.append('crosses a shard boundary')
        for p in problems:
            self.violation('%s: %s' % (req.describe(), p))
        return bool(problems)

    def process(self, req, data, bad, fault):
        """Run by a pool worker: do the request, then send its reply."""
        kind = fault and fault['kind']
        payload = b''
        if kind in STATUS_FAULTS:
            status = STATUS_FAULTS[kind]
        elif bad:
            status = ST_AIOERROR
        else:
            status, payload = self.double.execute(self.store, req, data)
        mode = kind if kind in ('short', 'fragment') else None
        if kind == 'slow':
            timer = threading.Timer(fault['delay_ms'] / 1000.0, self.finish,
                                    (req, status, payload, mode))
            timer.daemon = True
            timer.start()
        else:
            self.finish(req, status, payload, mode)

    def finish(self, req, status, payload, mode):
        with self.send_lock:
            if req.held and not req.released:
                req.pending = (status, payload, mode)
                return
            self._send(req, status, payload, mode)
            # A reply has gone out: the held replies of earlier requests
            # may follow now, after it.
            for h in [h for h in self.held if h.no < req.no]:
                self._release_locked(h)

    def _release(self, req):
        with self.send_lock:
            self._release_locked(req)

    def _release_locked(self, req):
        if req in self.held:
            self.held.remove(req)
            req.released = True
            if req.pending:
                self._send(req, *req.pending)

    def _send(self, req, status, payload, mode):
        """Send one reply; the caller holds send_lock."""
        with self.count_lock:
            self.inflight -= 1      # before the client can see the reply
        if self.dead:
            return
        buf = REPLY.pack(status, req.meta_ver, req.cmd_id, 0, req.seq, 0,
                         0, 0) + payload
        try:
            if mode == 'short':
                self.sock.sendall(buf[:REPLY.size + len(payload) // 2])
                self.kill()
            elif mode == 'fragment':
                # Tiny pieces across the head and into the data, then
                # bigger odd-sized ones, each a separate segment.
                pos = 0
                while pos < len(buf):
                    step = 3 if pos < 48 else 997
                    self.sock.sendall(buf[pos:pos + step])
                    pos += step
                    time.sleep(0.002)
            else:
                self.sock.sendall(buf)
        except OSError:
            self.kill()


class Store:
    """One store: a listener on 127.0.0.(index+1):port and its links."""

    def __init__(self, double, index):
        self.double, self.index = double, index
        self.ip = '127.0.0.%d' % (index + 1)
        self.port = None
        self.lsock = None
        self.thread = None
        self.running = False
        self.conns = set()
        self.lock = threading.Lock()
        self.next_cid = 0
        self.reset_stats()

    def reset_stats(self):
        with self.double.stats_lock:
            self.stats = {'connections': 0, 'handshakes_ok': 0,
                          'handshakes_rejected': 0, 'requests': {},
                          'bytes_read': 0, 'bytes_written': 0,
                          'max_inflight': 0, 'max_length': 0,
                          'violations': [], 'violations_total': 0}

    def count(self, key, n=1):
        with self.double.stats_lock:
            self.stats[key] += n

    def note_request(self, req, inflight):
        name = OP_NAMES.get(req.opcode, 'other')
        with self.double.stats_lock:
            s = self.stats
            s['requests'][name] = s['requests'].get(name, 0) + 1
            s['max_inflight'] = max(s['max_inflight'], inflight)
            s['max_length'] = max(s['max_length'], req.length)

    def violation(self, what):
        with self.double.stats_lock:
            self.stats['violations_total'] += 1
            if len(self.stats['violations']) < MAX_VIOLATIONS:
                self.stats['violations'].append(what)
        print('pfdouble: store %d: violation: %s' % (self.index, what),
              file=sys.stderr, flush=True)

    def bind(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.ip, port))
            s.listen(128)
        except OSError:
            s.close()
            raise
        self.lsock, self.port = s, s.getsockname()[1]

    def start(self):
        with self.lock:
            if self.running:
                return
            if self.lsock is None:
                self.bind(self.port)
            self.running = True
            self.thread = threading.Thread(target=self._accept_loop,
                                           args=(self.lsock,), daemon=True)
            self.thread.start()

    def stop(self):
        with self.lock:
            lsock, self.lsock = self.lsock, None
            self.running = False
            conns = list(self.conns)
        if lsock is not None:
            try:
                lsock.shutdown(socket.SHUT_RDWR)   # wakes accept() on Linux
            except OSError:
                pass
            if self.thread is not None:
                self.thread.join(5)
        for conn in conns:
            conn.kill()

    def _accept_loop(self, lsock):
        try:
            while True:
                sock, _ = lsock.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self.lock:
                    if not self.running:
                        sock.close()
                        continue
                    self.next_cid += 1
                    conn = Conn(self, sock, self.next_cid)
                    self.conns.add(conn)
                self.count('connections')
                threading.Thread(target=conn.run, daemon=True).start()
        except OSError:
            pass
        finally:
            lsock.close()


class Double:
    """The whole double: volumes, stores, faults, the worker pool."""

    def __init__(self, args):
        self.args = args
        self.max_depth = args.max_depth
        self.volumes = Volumes(args.dir, args.stores, args.shard_order)
        self.stats_lock = threading.Lock()
        self.fault_lock = threading.Lock()
        self.faults = []
        self.stores = [Store(self, k) for k in range(args.stores)]
        self.pool = queue.Queue()
        for _ in range(WORKERS):
            threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self):
        while True:
            conn, *args = self.pool.get()
            try:
                conn.process(*args)
            except Exception:
                traceback.print_exc()

    def bind_stores(self):
        """Bind all stores on one common port, retrying on conflicts."""
        for _ in range(100):
            try:
                self.stores[0].bind(0)
                for store in self.stores[1:]:
                    store.bind(self.stores[0].port)
                return
            except OSError:
                for store in self.stores:
                    if store.lsock is not None:
                        store.lsock.close()
                        store.lsock = None
        raise SystemExit('pfdouble: no port free on all store addresses')

    def take_fault(self, store, what):
        """Consume one pending fault that applies: what is 'hs' for a
        handshake, else the request's opcode."""
        with self.fault_lock:
            for f in self.faults:
                if f['store'] not in ('all', store):
                    continue
                kind = f['kind']
                if (what == 'open') != (kind == 'conductor_hang'):
                    continue            # the conductor's fault
                if (what == 'hs') != (kind == 'hs_reject'):
                    continue            # handshake faults vs data faults
                if kind == 'short' and what != OP_READ:
                    continue            # 'short' waits for a READ
                f['count'] -= 1
                if f['count'] <= 0:
                    self.faults.remove(f)
                return dict(f)
        return None

    def execute(self, store, req, data):
        """The checks after the violations, then the I/O: (status, data)."""
        vols = self.volumes
        vol = vols.by_id(req.vol_id)
        if vol is None or req.vol_id not in vols.prepared:
            return ST_REOPEN, b''
        if vols.primary(vol, req.offset >> vols.order_of(vol)) != \
                store.index:
            return ST_NOT_PRIMARY, b''
        if req.meta_ver != vol['meta_ver'] & 0xFFFF:
            return ST_REOPEN, b''
        seq = None if req.snap_seq == SNAP_HEAD else req.snap_seq
        if seq is not None and req.opcode == OP_WRITE:
            return ST_AIOERROR, b''
        try:
            fd = vols.fd(vol, seq)
            if fd is None:
                return ST_AIOERROR, b''
            if req.opcode == OP_WRITE:
                with vols.write_lock(vol):
                    os.pwrite(fd, data, req.offset)
                store.count('bytes_written', req.length)
                return ST_OK, b''
            payload = os.pread(fd, req.length, req.offset)
            payload += bytes(req.length - len(payload))
            store.count('bytes_read', req.length)
            return ST_OK, payload
        except OSError as e:
            print('pfdouble: I/O error: %s' % e, file=sys.stderr, flush=True)
            return ST_AIOERROR, b''

    # Conductor API (/s5c/).

    def s5c_create_volume(self, p):
        order = None
        if p.get('shard_order'):
            # the double's own: small shards for tests of many shards
            order = int_param(p, 'shard_order')
            if not 12 <= order <= 40:
                raise ApiError(EINVAL, 'shard_order must be in 12..40')
        vol = self.volumes.create(p.get('volume_name', ''),
                                  parse_size(p.get('size', '')),
                                  int_param(p, 'rep_cnt', 1), order)
        return {'volume_id': vol['id'], 'volume_size': vol['size']}

    def s5c_open_volume(self, p):
        # conductor_hang: this open_volume is answered only after
        # delay_ms (a conductor that accepted and then stalls)
        fault = self.take_fault('all', 'open')
        if fault:
            time.sleep(fault['delay_ms'] / 1000.0)
        vols = self.volumes
        with vols.lock:
            vol = vols.get(p.get('volume_name', ''))
            snap = p.get('snapshot_name', '')
            if snap and snap not in vol['snaps']:
                raise ApiError(ENOENT, 'snapshot %r not found' % snap)
            vols.prepared.add(vol['id'])  # the conductor prepares the stores
            return {'volume_name': vol['name'], 'volume_id': vol['id'],
                    'volume_size': vol['size'], 'meta_ver': vol['meta_ver'],
                    'snap_seq': vol['snaps'][snap] if snap else -1,
                    'shard_lba_cnt_order': vols.order_of(vol),
                    'shards': [{'index': i, 'status': 'OK',
                                'store_ips': vols.store_ips(vol, i)}
                               for i in range(vols.nshards(vol))],
                    'rep_count': vol['rep_cnt']}

    def s5c_delete_volume(self, p):
        self.volumes.delete(p.get('volume_name', ''))
        return {}

    def s5c_create_snapshot(self, p):
        return {'snap_seq': self.volumes.snapshot(p.get('volume_name', ''),
                                                  p.get('snapshot_name', ''))}

    def s5c_list_volume(self, p):
        with self.volumes.lock:
            return {'volumes': [
                {'volume_name': v['name'], 'volume_id': v['id'],
                 'volume_size': v['size'], 'meta_ver': v['meta_ver'],
                 'snapshots': v['snaps']}
                for v in self.volumes.vols.values()]}

    # Control API (/ctl/), the double's own.

    def store_param(self, p, allow_all=False):
        if allow_all and p.get('store') == 'all':
            return 'all'
        k = int_param(p, 'store')
        if not 0 <= k < len(self.stores):
            raise ApiError(EINVAL, 'no store %d' % k)
        return k

    def ctl_bump_meta_ver(self, p):
        return {'meta_ver': self.volumes.bump(p.get('volume_name', ''))}

    def ctl_set_primary(self, p):
        self.volumes.set_primary(p.get('volume_name', ''),
                                 int_param(p, 'shard'), self.store_param(p))
        return {}

    def ctl_fault(self, p):
        kind = p.get('kind', '')
        if kind not in FAULT_KINDS:
            raise ApiError(EINVAL, 'unknown fault kind %r' % kind)
        fault = {'store': self.store_param(p, allow_all=True), 'kind': kind,
                 'count': int_param(p, 'count', 1),
                 'delay_ms': int_param(p, 'delay_ms', 500)}
        with self.fault_lock:
            self.faults.append(fault)
        return {}

    def ctl_stop_store(self, p):
        self.stores[self.store_param(p)].stop()
        return {}

    def ctl_start_store(self, p):
        self.stores[self.store_param(p)].start()
        return {}

    def ctl_set_max_depth(self, p):
        depth = int_param(p, 'depth')
        if not 1 <= depth <= 255:
            raise ApiError(EINVAL, 'depth must be in 1..255')
        self.max_depth = depth
        return {}

    def ctl_stats(self, p):
        with self.stats_lock:
            stores = [dict(json.loads(json.dumps(s.stats)), store=s.index,
                           address='%s:%d' % (s.ip, s.port),
                           running=s.running) for s in self.stores]
        with self.fault_lock:
            faults = [dict(f) for f in self.faults]
        return {'stores': stores, 'faults': faults,
                'max_depth': self.max_depth,
                'violations': ['store %d: %s' % (s['store'], v)
                               for s in stores for v in s['violations']]}

    def ctl_reset(self, p):
        with self.fault_lock:
            self.faults = []
        for store in self.stores:
            store.reset_stats()
            store.start()
        self.max_depth = self.args.max_depth
        return {}

    def call(self, api, op, params):
        fn = getattr(self, '%s_%s' % (api, op), None)
        if fn is None:
            raise ApiError(EINVAL, 'unknown op %r' % op)
        return fn(params)


class Handler(BaseHTTPRequestHandler):
    """The conductor's HTTP front: GET /s5c/?op=... and GET /ctl/?op=..."""

    protocol_version = 'HTTP/1.1'
    server_version = 'pfdouble'

    def do_GET(self):
        self._dispatch(urllib.parse.urlsplit(self.path).query)

    def _dispatch(self, query):
        path = urllib.parse.urlsplit(self.path).path.strip('/')
        params = {k: v[-1] for k, v in
                  urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        op = params.pop('op', '')
        code = 200
        try:
            if path not in ('s5c', 'ctl'):
                code = 404
                raise ApiError(ENOENT, 'no such path /%s/' % path)
            reply = {'ret_code': 0}
            reply.update(self.server.double.call(path, op, params))
        except ApiError as e:
            reply = {'ret_code': e.code, 'reason': e.reason}
        except Exception as e:
            traceback.print_exc()
            reply = {'ret_code': 5, 'reason': 'internal error: %r' % e}
        body = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        if self.close_connection:
            self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--dir', required=True, help='volume data directory')
    ap.add_argument('--ready', required=True, help='JSON file written once '
                    'everything listens')
    ap.add_argument('--stores', type=int, default=2)
    ap.add_argument('--shard-order', type=int, default=36)
    ap.add_argument('--max-depth', type=int, default=128)
    args = ap.parse_args()
    if not 1 <= args.stores <= 254 or not 9 <= args.shard_order <= 62:
        ap.error('--stores must be 1..254 and --shard-order 9..62')
    if not 1 <= args.max_depth <= 255:
        ap.error('--max-depth must be 1..255')
    os.makedirs(args.dir, exist_ok=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    double = Double(args)
    double.bind_stores()
    for store in double.stores:
        store.start()
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.double = double
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    ready = {'conductor': '127.0.0.1:%d' % httpd.server_address[1],
             'store_port': double.stores[0].port,
             'stores': [s.ip for s in double.stores], 'pid': os.getpid()}
    tmp = args.ready + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(ready, f)
    os.replace(tmp, args.ready)
    print('pfdouble: ready: %s' % json.dumps(ready), file=sys.stderr,
          flush=True)

    while not stop.wait(0.5):
        pass
    httpd.shutdown()
    httpd.server_close()
    for store in double.stores:
        store.stop()
    try:
        os.unlink(args.ready)
    except FileNotFoundError:
        pass
    print('pfdouble: stopped', file=sys.stderr, flush=True)


if __name__ == '__main__':
    main()
