"""Tests of pfdouble, the PureFlash conformance double, with a raw client.

Run:  /usr/bin/python3 -m pytest -q tests/pureflash/test_pfdouble.py
"""

import http.client
import itertools
import os
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pfdouble_client import (  # noqa: E402
    HANDSHAKE, OP_READ, OP_WRITE, ST_AIOERROR, ST_NOT_PRIMARY, ST_REOPEN,
    PfDouble, RawConn, StatusError)

MIB = 1 << 20
_names = itertools.count()


@pytest.fixture(scope='module')
def double(tmp_path_factory):
    with PfDouble(str(tmp_path_factory.mktemp('pfdouble')),
                  shard_order=20) as pf:
        yield pf


@pytest.fixture
def pf(double):
    """The module's double, reset: no faults, stats or violations."""
    assert double.ctl('reset')['ret_code'] == 0
    return double


@pytest.fixture
def vol(pf):
    """A fresh 4 MiB volume (four 1 MiB shards)."""
    name = 'vol%d' % next(_names)
    assert pf.s5c('create_volume', volume_name=name, size='4M',
                  rep_cnt=1, host_id=-1)['ret_code'] == 0
    return name


def pattern(n, seed=0):
    return bytes((i * 7 + seed + i // 4096) & 0xFF for i in range(n))


def violations(pf):
    return pf.ctl('stats')['violations']


def test_create_open(pf, vol):
    assert pf.s5c('create_volume', volume_name=vol, size='1M')['ret_code']
    info = pf.s5c('open_volume', volume_name=vol, snapshot_name='')
    assert info['ret_code'] == 0
    assert info['volume_size'] == 4 * MIB and info['volume_id'] > 0xFFFF
    assert info['snap_seq'] == -1 and info['shard_lba_cnt_order'] == 20
    assert [s['index'] for s in info['shards']] == [0, 1, 2, 3]
    assert info['shards'][0]['store_ips'] == '127.0.0.1,127.0.0.2'
    missing = pf.s5c('open_volume', volume_name='no-such-volume')
    assert missing['ret_code'] != 0 and missing['reason']
    nosnap = pf.s5c('open_volume', volume_name=vol, snapshot_name='nope')
    assert nosnap['ret_code'] != 0
    names = [v['volume_name'] for v in pf.s5c('list_volume')['volumes']]
    assert vol in names
    assert pf.ctl('no_such_op')['ret_code'] != 0


def test_http_keepalive_and_close(pf):
    host, port = pf.conductor.split(':')
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    socks = []
    for _ in range(2):      # two requests on one HTTP/1.1 connection
        conn.request('GET', '/s5c/?op=list_volume')
        assert b'"ret_code": 0' in conn.getresponse().read()
        socks.append(conn.sock)
    assert socks[0] is socks[1]
    conn.request('GET', '/ctl/?op=stats', headers={'Connection': 'close'})
    reply = conn.getresponse()
    assert reply.getheader('Connection') == 'close'
    assert b'"ret_code": 0' in reply.read()
    conn.close()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b'GET /s5c/?op=list_volume HTTP/1.0\r\n\r\n')
        reply = b''
        while True:         # HTTP/1.0: the server closes after the reply
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b'HTTP/1.') and b'"ret_code": 0' in reply


def test_roundtrip_across_shard_boundary(pf, vol):
    conn = pf.connect(vol)
    assert conn.hs_result == 0 and conn.depth == 32
    data = pattern(384 * 1024, seed=1)
    conn.write(MIB - 128 * 1024, data)          # spans shards 0 and 1
    assert conn.read(MIB - 128 * 1024, len(data)) == data
    pieces = [conn.read(off, 4096)
              for off in range(MIB - 128 * 1024, MIB + 256 * 1024, 4096)]
    assert b''.join(pieces) == data
    assert conn.read(3 * MIB, 8192) == bytes(8192)     # never written
    stats = pf.ctl('stats')['stores'][0]
    assert stats['bytes_written'] == len(data)
    assert stats['requests']['WRITE'] == 3 and stats['max_length'] == 131072
    assert violations(pf) == []


def test_restart_keeps_data_and_needs_open(tmp_path):
    with PfDouble(str(tmp_path), shard_order=20) as pf:
        pf.s5c('create_volume', volume_name='keep', size='2M')
        pf.connect('keep').write(4096, pattern(8192, seed=3))
        info = pf.s5c('open_volume', volume_name='keep')
    with PfDouble(str(tmp_path), shard_order=20) as pf:
        # Not opened since this start: the store refuses the handshake.
        unopened = RawConn(pf.stores[0], pf.store_port, info)
        assert unopened.hs_result == 22
        assert pf.connect('keep').read(4096, 8192) == pattern(8192, seed=3)
        assert violations(pf) == []


def test_reopen_fault_and_meta_ver(pf, vol):
    conn = pf.connect(vol)
    pf.ctl('fault', store=0, kind='reopen', count=1)
    with pytest.raises(StatusError) as err:
        conn.read(0, 512)
    assert err.value.status & ST_REOPEN
    conn.read(0, 512)       # the fault was for one request only
    old = conn.meta_ver
    assert pf.ctl('bump_meta_ver', volume_name=vol)['meta_ver'] == old + 1
    with pytest.raises(StatusError) as err:
        conn.write(0, bytes(512))
    assert err.value.status & ST_REOPEN
    conn.meta_ver = pf.s5c('open_volume', volume_name=vol)['meta_ver']
    assert conn.meta_ver == old + 1
    conn.write(0, bytes(512))
    assert violations(pf) == []


def test_not_primary(pf, vol):
    assert pf.ctl('set_primary', volume_name=vol, shard=1,
                  store=1)['ret_code'] == 0
    info = pf.s5c('open_volume', volume_name=vol)
    assert info['shards'][1]['store_ips'] == '127.0.0.2,127.0.0.1'
    assert info['shards'][0]['store_ips'] == '127.0.0.1,127.0.0.2'
    conn0 = pf.connect(vol, store=0)
    with pytest.raises(StatusError) as err:
        conn0.read(MIB, 512)
    assert err.value.status == ST_NOT_PRIMARY
    conn0.read(0, 512)
    conn1 = pf.connect(vol, store=1)
    conn1.write(MIB, pattern(4096))
    assert conn1.read(MIB, 4096) == pattern(4096)
    with pytest.raises(StatusError) as err:
        conn1.read(0, 512)
    assert err.value.status == ST_NOT_PRIMARY
    pf.ctl('fault', store='all', kind='not_primary', count=1)
    with pytest.raises(StatusError) as err:
        conn0.read(0, 512)
    assert err.value.status == ST_NOT_PRIMARY
    assert violations(pf) == []


def test_aioerror_and_slow(pf, vol):
    conn = pf.connect(vol)
    pf.ctl('fault', store=0, kind='aioerror', count=1)
    with pytest.raises(StatusError) as err:
        conn.write(0, bytes(512))
    assert err.value.status == ST_AIOERROR
    pf.ctl('fault', store=0, kind='slow', count=1, delay_ms=300)
    start = time.monotonic()
    conn.read(0, 512)
    assert time.monotonic() - start >= 0.3


def test_drop_closes(pf, vol):
    conn = pf.connect(vol)
    pf.ctl('fault', store=0, kind='drop', count=1)
    conn.submit(OP_READ, 0, 4096)
    with pytest.raises((EOFError, ConnectionError)):
        conn.reply()
    pf.connect(vol).read(0, 512)    # later connections work


def test_short_read_closes_after_half(pf, vol):
    conn = pf.connect(vol)
    conn.write(0, pattern(65536))
    pf.ctl('fault', store=0, kind='short', count=1)
    conn.write(0, pattern(65536))   # 'short' skips writes
    conn.submit(OP_READ, 0, 65536)
    got = conn.recv_exact(32)
    assert got[:2] == b'\0\0'       # status 0, then half of the data
    rest = b''
    while True:
        chunk = conn.sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    assert rest == pattern(65536)[:32768]


def test_reorder(pf, vol):
    conn = pf.connect(vol)
    conn.write(0, pattern(8192))
    pf.ctl('fault', store=0, kind='reorder', count=1)
    first = conn.submit(OP_READ, 0, 4096)
    second = conn.submit(OP_READ, 4096, 4096)
    replies = [conn.reply() for _ in range(2)]
    assert [r[1:3] for r in replies] == [second, first]
    assert replies[0][3] == pattern(8192)[4096:]
    assert replies[1][3] == pattern(8192)[:4096]
    assert violations(pf) == []


def test_fragment(pf, vol):
    conn = pf.connect(vol)
    conn.write(0, pattern(131072, seed=5))
    pf.ctl('fault', store=0, kind='fragment', count=2)
    assert conn.read(0, 131072) == pattern(131072, seed=5)
    conn.write(512, b'y' * 512)
    assert conn.read(0, 1024) == pattern(512, seed=5) + b'y' * 512


def test_hs_reject(pf, vol):
    pf.ctl('fault', store=0, kind='hs_reject', count=1)
    assert pf.connect(vol).hs_result == 22
    assert pf.connect(vol).hs_result == 0
    stats = pf.ctl('stats')['stores'][0]
    assert stats['handshakes_rejected'] == 1 and stats['handshakes_ok'] == 1
    assert violations(pf) == []


def test_handshake_checks(pf, vol):
    info = dict(pf.s5c('open_volume', volume_name=vol))
    assert RawConn(pf.stores[0], pf.store_port, info, depth=0).hs_result == 22
    assert RawConn(pf.stores[0], pf.store_port, info,
                   protocol_ver=2).hs_result == 22
    info['volume_id'] += 1000
    assert RawConn(pf.stores[0], pf.store_port, info).hs_result == 22
    assert len(violations(pf)) == 2     # bad depth, bad protocol_ver
    pf.ctl('set_max_depth', depth=4)
    assert pf.connect(vol, depth=200).depth == 4


def test_violation_bad_length(pf, vol):
    conn = pf.connect(vol)
    conn.submit(OP_READ, 0, 1000)
    assert conn.reply()[0] == ST_AIOERROR
    found = violations(pf)
    assert len(found) == 1 and 'multiple of 512' in found[0]
    pf.ctl('reset')
    assert violations(pf) == []


def test_violation_over_depth(pf, vol):
    pf.ctl('set_max_depth', depth=1)
    conn = pf.connect(vol, depth=8)
    assert conn.depth == 1
    pf.ctl('fault', store=0, kind='slow', count=1, delay_ms=200)
    conn.submit(OP_READ, 0, 512)
    conn.submit(OP_READ, 512, 512)
    assert [conn.reply()[0] for _ in range(2)] == [0, 0]  # logged only
    found = violations(pf)
    assert len(found) == 1 and 'granted depth 1' in found[0]
    assert pf.ctl('stats')['stores'][0]['max_inflight'] == 2


def test_other_violations(pf, vol):
    conn = pf.connect(vol)
    conn.submit(OP_READ, MIB - 512, 1024)           # crosses a shard
    conn.submit(OP_READ, 4 * MIB, 512)              # beyond the size
    conn.submit(OP_READ, 0, 256 * 1024)             # too long
    conn.submit(OP_WRITE, 0, 512, bytes(512), vol_id=conn.vol_id + 1)
    conn.submit(0x0C, 0, 512)                       # unknown opcode
    assert [conn.reply()[0] for _ in range(5)] == [ST_AIOERROR] * 5
    found = violations(pf)
    for what in ('shard boundary', 'beyond', '128 KiB', 'vol_id',
                 'unknown opcode'):
        assert sum(what in v for v in found) == 1, (what, found)
    pf.ctl('reset')
    with socket.create_connection((pf.stores[0], pf.store_port)) as s:
        s.sendall(bytes([OP_READ]) + bytes(63))     # no handshake first
        assert HANDSHAKE.unpack(s.recv(32))[6] == 22
    assert 'request before handshake' in violations(pf)[0]


def test_snapshot(pf, vol):
    conn = pf.connect(vol)
    conn.write(0, pattern(8192, seed=1))
    reply = pf.s5c('create_snapshot', volume_name=vol, snapshot_name='s1')
    assert reply['ret_code'] == 0 and reply['snap_seq'] == 1
    conn.write(0, pattern(8192, seed=2))
    assert conn.read(0, 8192) == pattern(8192, seed=2)
    snap = pf.connect(vol, snapshot_name='s1')
    assert snap.snap_seq == 1
    assert snap.read(0, 8192) == pattern(8192, seed=1)
    with pytest.raises(StatusError) as err:
        snap.write(0, bytes(512))
    assert err.value.status == ST_AIOERROR
    assert violations(pf) == []


def test_stop_start_store(pf, vol):
    conn = pf.connect(vol)
    pf.ctl('stop_store', store=0)
    conn.submit(OP_READ, 0, 512)
    with pytest.raises((EOFError, ConnectionError)):
        conn.reply()
    with pytest.raises(ConnectionRefusedError):
        pf.connect(vol)
    assert pf.connect(vol, store=1).hs_result == 0
    pf.ctl('start_store', store=0)
    assert pf.connect(vol).read(0, 512) == bytes(512)


def test_delete_volume(pf, vol):
    assert pf.s5c('delete_volume', volume_name=vol)['ret_code'] == 0
    assert pf.s5c('open_volume', volume_name=vol)['ret_code'] != 0
    assert pf.s5c('delete_volume', volume_name=vol)['ret_code'] != 0
