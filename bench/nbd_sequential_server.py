#!/usr/bin/env python3
"""A minimal sequential NBD server (one connection, fixed newstyle, NBD_OPT_GO / EXPORT_NAME, simple
replies; WRITE, FLUSH, DISC): blocking recv_into one buffer, os.pwrite, reply. A reference point
for the NBD write cost on this kernel (bench/README.md, "Session 2 re-measure"), not a server.

    python3 bench/nbd_sequential_server.py DST.img /tmp/py.sock &
    nbdcopy --connections=1 --threads=1 --request-size=1048576 --requests=16 --flush SRC.img 'nbd+unix:///?socket=/tmp/py.sock'

Prints the server's user and system CPU when the client disconnects.
"""
import socket, struct, os, sys, time
path, sockp = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
fd = os.open(path, os.O_RDWR)
try: os.unlink(sockp)
except FileNotFoundError: pass
l = socket.socket(socket.AF_UNIX); l.bind(sockp); l.listen(1)
c, _ = l.accept()
def rx(n):
    b = bytearray(n); mv = memoryview(b); got = 0
    while got < n:
        k = c.recv_into(mv[got:])
        if k == 0: raise EOFError
        got += k
    return b
c.sendall(b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3))
rx(4)
OPT_REPLY = 0x3e889045565a9
def reply(opt, typ, data=b""):
    c.sendall(struct.pack(">QIII", OPT_REPLY, opt, typ, len(data)) + data)
tflags = 1 | 4 | 8  # has flags, send flush, send fua
while True:
    magic, opt, ln = struct.unpack(">QII", rx(16)); data = rx(ln)
    if opt == 7:  # GO
        reply(opt, 3, struct.pack(">HQH", 0, size, tflags)); reply(opt, 1); break
    elif opt == 1:  # EXPORT_NAME
        c.sendall(struct.pack(">QH", size, tflags) + b"\0" * 124); break
    else:
        reply(opt, 0x80000001)
buf = bytearray(32 << 20); mv = memoryview(buf)
t0 = os.times()
while True:
    try: hdr = rx(28)
    except EOFError: break
    magic, flags, typ, cookie, off, ln = struct.unpack(">IHHQQI", hdr)
    if typ == 1:
        got = 0
        while got < ln:
            k = c.recv_into(mv[got:ln]); got += k
        os.pwrite(fd, mv[:ln], off)
    elif typ == 3:
        os.fdatasync(fd)
    elif typ == 2:
        break
    c.sendall(struct.pack(">IIQ", 0x67446698, 0, cookie))
t1 = os.times()
print("pynbd user %.2f sys %.2f" % (t1.user - t0.user, t1.system - t0.system), flush=True)
