#!/usr/bin/env python3
"""Writes the seed corpus: fuzz/corpus/<target>/<name>, realistic inputs for each target.

Heads are those real clients and servers send (curl, Python, Node, wrk, browsers, nginx);
cgroup lines are the shapes Docker, containerd, CRI-O, Podman, kubelets and systemd give.
Run from anywhere: python3 fuzz/make_seeds.py (rewrites the seeds, leaves other files).
"""
import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
ID = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708"
UID = "7d9c2b1a-3e4f-4a5b-8c6d-0e1f2a3b4c5d"


def write(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())


REQUESTS = {
    "curl": "GET /api/v2/products?page=2 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "python_urllib": "GET /users/12345/orders HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Python-urllib/3.11\r\nConnection: close\r\n\r\n",
    "node_post": "POST /orders/order-12345/lines HTTP/1.1\r\nContent-Type: application/json\r\nHost: localhost:3000\r\nConnection: keep-alive\r\nContent-Length: 17\r\n\r\n{\"qty\":1,\"id\":42}",
    "wrk": "GET /items/123e4567-e89b-12d3-a456-426614174000 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    "browser": "GET /docs/getting-started#install HTTP/1.1\r\nHost: Docs.Example.COM:443\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\n\r\n",
    "delete": "DELETE /objects/507f1f77bcf86cd799439011 HTTP/1.1\r\nhost: api:80\r\n\r\n",
    "options": "OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
    "absolute": "GET http://proxy.local/reset/aZ3kLq9PwX2mNb7VtR5s HTTP/1.1\r\nHost: proxy.local\r\n\r\n",
    "webdav": "PROPFIND /dav/users/jane.doe@example.com/ HTTP/1.1\r\nHOST:\tdav.example.org\r\nDepth: 1\r\n\r\n",
    "pipelined": "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b/7 HTTP/1.1\r\nHost: x\r\n\r\n",
    "trailing_blank": "GET / HTTP/1.1\r\nHost: Web:80 \t\r\n\r\n",
    "forwarded": "GET /page HTTP/1.0\r\nX-Forwarded-Host: evil\r\nAccept: */*\r\n\r\n",
    "long_path": "GET /" + "segment/" * 30 + "end HTTP/1.1\r\nHost: long.example\r\n\r\n",
    "cut_path": "GET /" + "ab/" * 63 + "a HTTP/1.1\r\nHost: cut.example\r\n\r\n",
    "slashes": "GET //a//b/ HTTP/1.1\r\nHost: s\r\n\r\n",
    "slashes_cut": "GET " + "/" * 200 + " HTTP/1.1\r\n\r\n",
}
for name, text in REQUESTS.items():
    data = text.encode()
    write("request_line", name, b"\x03" + data)
    write("host_header", name, b"\x03" + data)
write("request_line", "curl_cut_in_7s", b"\x01" + REQUESTS["curl"].encode())
write("host_header", "browser_cut_in_16s", b"\x02" + REQUESTS["browser"].encode())

RESPONSES = {
    "nginx": "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 615\r\nConnection: keep-alive\r\n\r\n<!DOCTYPE html>",
    "python": "HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.2\r\nContent-type: text/plain\r\n\r\nhello",
    "node_chunked": "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "no_content": "HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n",
    "not_modified": "HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n",
    "continue": "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    "error": "HTTP/1.1 503 Service Unavailable\r\ncontent-length:  19\r\nRetry-After: 1\r\n\r\nService Unavailable",
    "two_lengths": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    "mention": "HTTP/1.1 200 OK\r\nX-Note: Content-Length: 9\r\n\r\n",
    "http2": "HTTP/2 200\r\n\r\n",
}
for name, text in RESPONSES.items():
    write("response_head", name, b"\x03" + text.encode())
write("response_head", "nginx_cut_in_7s", b"\x01" + RESPONSES["nginx"].encode())


# Reads where a request should start that are not one: what other clients send to an HTTP port.
NOT_REQUESTS = {
    "tls_client_hello": bytes.fromhex("160301020001000001fc0303") + bytes(range(32)),
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "redis": b"*1\r\n$4\r\nPING\r\n",
    "lower_case": b"get /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT host.example:443 HTTP/1.1\r\nHost: host.example:443\r\n\r\n",
    "ssh": b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
    "body_rest": b"qty=1&id=42",
    "noise": bytes([0x00, 0xFF, 0x13, 0x37, 0x80, 0x41, 0x0A]),
}
for name, data in NOT_REQUESTS.items():
    write("not_request", name, data)

# PROXY protocol headers as load balancers send them, with a request after them: the seed
# byte ends the read (the rest is what an earlier read left in the capture).
PROXY_V1 = b"PROXY TCP4 192.0.2.10 198.51.100.7 56324 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
PROXY_V1_6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
PROXY_V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12)
            + bytes([192, 0, 2, 10, 198, 51, 100, 7]) + struct.pack(">HH", 56324, 80)
            + b"GET / HTTP/1.1\r\n\r\n")
write("proxy_header", "v1_with_request", bytes([len(PROXY_V1)]) + PROXY_V1)
write("proxy_header", "v1_cut_before_line_end", bytes([20]) + PROXY_V1)
write("proxy_header", "v1_ipv6", bytes([len(PROXY_V1_6)]) + PROXY_V1_6)
write("proxy_header", "v1_unknown", bytes([15]) + b"PROXY UNKNOWN\r\n")
write("proxy_header", "v2_tcp4", bytes([len(PROXY_V2)]) + PROXY_V2)
write("proxy_header", "v2_cut", bytes([14]) + PROXY_V2)

def fnv(data, h=0xCBF29CE484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def event(kind, route, path=b"", tgid=4242):
    return struct.pack("<QIHBB", route, tgid, len(path), kind, 0) + path.ljust(192, b"\0")


# kinds: 0 template, 1 collapsed, 2 listener, 3 host, 4 observation. Paths without identifiers are their own
# template, so their hash is that of the path.
write("ring_event", "template", event(0, fnv(b"/api/v2/products"), b"/api/v2/products"))
write("ring_event", "collapsed", event(1, fnv(b"/docs/{*}"), b"/docs/intro HTTP/1.1\r\n"))
write("ring_event", "listener", event(2, 7))
write("ring_event", "host", event(3, fnv(b"shop.example.com:8080"), b"shop.example.com:8080"))
write("ring_event", "mismatch", event(0, 1, b"/other"))
# kind 4: a request carried past its histogram (route, tgid, status, kind, method, role,
# bucket, reserved, duration_ns).
write("ring_event", "observation",
      struct.pack("<QIHBBBB6xQ", fnv(b"/api/v2/products"), 4242, 200, 4, 1, 1, 3, 1_500_000))

write("route_budget", "routes", b"\x04" + b"\n".join([
    b"\x00/api/v2/products", b"\x00/users/{id}", b"\x00/docs/{*}", b"\x00/docs/intro",
    b"\x01shop.example.com:8080", b"\x00/a", b"\x00/b/c", b"\x00/", b"\x00__overflow__",
    b"\x02/static/app.js",
]))

CGROUPS = {
    "docker_v2": f"0::/system.slice/docker-{ID}.scope\n",
    "docker_v1": f"12:cpu,cpuacct:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n",
    "k8s_cgroupfs": f"0::/kubepods/burstable/pod{UID}/{ID}\n",
    "k8s_systemd_containerd": f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n",
    "k8s_crio": f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{ID}.scope\n",
    "podman": f"0::/machine.slice/libpod-{ID}.scope/container\n",
    "podman_conmon": f"0::/machine.slice/libpod-conmon-{ID}.scope\n",
    "user_session": "0::/user.slice/user-1000.slice/session-3.scope\n",
    "service": "0::/system.slice/nginx.service\n",
    "init": "0::/init.scope\n",
    "v1_plain": "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/ef7deb3a9fc6d7beec4fa78e0faa783a\n1:cpu:/\n0::/\n",
}
for name, text in CGROUPS.items():
    write("cgroup", name, text)

ENVIRONS = {
    "otel_name": b"PATH=/usr/local/bin:/usr/bin:/bin\0HOSTNAME=checkout-7d9f\0OTEL_SERVICE_NAME=checkout\0HOME=/root\0",
    "otel_attributes": b"LANG=C.UTF-8\0OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=cart%20api,service.version=1.2\0",
    "both": b"OTEL_RESOURCE_ATTRIBUTES=service.name=other\0OTEL_SERVICE_NAME=checkout\0",
    "blank_name": b"OTEL_SERVICE_NAME=  \0OTEL_RESOURCE_ATTRIBUTES=service.name=%20\0",
    "none": b"PATH=/bin\0TERM=xterm\0",
}
for name, data in ENVIRONS.items():
    write("environ", name, data)

CMDLINES = {
    "python_script": b"python3\0python3\0-u\0/srv/app.py\0--port\0" + b"8080\0",
    "python_module": b"python3.11\0python3\0-W\0ignore\0-m\0shop.worker\0",
    "python_c": b"python3\0python3\0-c\0print(1)\0",
    "node": b"node\0node\0--require\0./trace.js\0server.js\0",
    "java_jar": b"java\0/usr/bin/java\0-Xmx1g\0-jar\0/opt/billing.jar\0",
    "java_class": b"java\0java\0-cp\0lib/*\0com.shop.Main\0",
    "ruby": b"ruby\0ruby\0-I\0lib\0app.rb\0",
    "php": b"php-fpm\0php-fpm: pool www\0",
    "nginx": b"nginx\0nginx: worker process\0",
    "gunicorn": b"gunicorn\0/usr/bin/python3\0/usr/bin/gunicorn\0-b\0localhost:8000\0shop.wsgi:application\0",
    "gunicorn_retitled": b"python3.11\0gunicorn: worker [app:create_app()]     \0",
    "celery": b"python3\0python3\0-m\0celery\0-A\0tasks\0worker\0",
    "flask": b"flask\0/usr/bin/python3\0/usr/bin/flask\0--app=hello:make\0run\0",
    "puma": b"puma\0puma 5.6.5 (tcp://127.0.0.1:18201) [shopfront]\0\0",
    "sidekiq": b"sidekiq\0sidekiq 6.4.1 shopfront [0 of 5 busy]\0",
    "uwsgi": b"uwsgi\0uwsgi\0--http-socket\0:8000\0--module=shop.wsgi:application\0",
}
for name, data in CMDLINES.items():
    write("cmdline", name, data)

for name in ["kworker/u8:0-ev", "ksoftirqd/1", "rcu_preempt", "nginx", "python3", "exactly15bytes!",
             "sixteen_bytes_xx"]:
    write("comm", name.replace("/", "_"), name)

for name in [f"shop_checkout-7d9f_{UID}", f"kube-system_coredns-5d78c9869d-abcde_{UID}",
             "default_web_short", "not-a-pod"]:
    write("pod_dir", name, name)

TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1\n"
    "   3: 0100007F:0016 0100007F:C350 06 00000000:00000000 03:00000DC5 00000000     0        0 0 3 0000000000000000\n"
)
TCP6 = (
    "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0\n"
    "   1: 00000000000000000000000001000000:0050 00000000000000000000000001000000:A1B2 01 00000000:00000000 00:00000000 00000000    33        0 2002 1 0000000000000000 20 4 30 10 -1\n"
)
write("proc_net_tcp", "tcp", TCP)
write("proc_net_tcp", "tcp6", TCP6)
write("proc_net_tcp", "fd_links", "socket:[1002]\npipe:[77]\n/dev/null\nanon_inode:[eventfd]\n")

fixtures = pathlib.Path(__file__).resolve().parent.parent / "monitor" / "tests" / "fixtures"
switch = (fixtures / "sched_switch.format").read_bytes()
wakeup = (fixtures / "sched_wakeup.format").read_bytes()
write("tracefs_format", "sched", switch + b"\0" + wakeup)

MAPS = (
    "55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1835  /usr/sbin/nginx\n"
    "7f11a0000000-7f11a0021000 rw-p 00000000 00:00 0 \n"
    "7f11a2000000-7f11a201c000 r--p 00000000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
    "7f11a201c000-7f11a2077000 r-xp 0001c000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
    "7f11a2100000-7f11a2300000 r-xp 00000000 08:01 2099  /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n"
    "7f11a2400000-7f11a2410000 r-xp 00000000 fd:1a 3001  /opt/my app/lib/libssl.so.1.1\n"
    "7f11a2500000-7f11a2510000 r-xp 00000000 08:01 3002  /usr/lib/libssl.so.3 (deleted)\n"
    "7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0     [stack]\n"
)
write("proc_maps", "nginx", MAPS)
write("proc_maps", "overlay", "7f0000000000-7f0000001000 r--p 00000000 00:2f 131 /usr/lib/libssl.so.1.1\n")


def elf(symbols, code=b""):
    """A minimal 64-bit ELF file whose .dynsym holds `symbols`, (name, defined) pairs; the
    defined ones are 16-byte functions in a .text at address 0x1000, each opening with the
    bytes of `code` (one `bytes` per symbol) or `ret`."""
    strings = b"\0"
    entries = [b"\0" * 24]
    for index, (name, defined) in enumerate(symbols):
        offset = len(strings)
        strings += name.encode() + b"\0"
        # st_name, st_info (global function), st_other, st_shndx (3: .text, 0: undefined),
        # value, size
        entries.append(struct.pack("<IBBHQQ", offset, 0x12, 0, 3 if defined else 0,
                                   TEXT_ADDRESS + 16 * index, 16))
    dynsym = b"".join(entries)
    text = b"".join((code[i] if i < len(code) else b"").ljust(16, b"\xc3")
                    for i in range(len(symbols)))
    header_size, section_size = 64, 64
    dynsym_at = header_size
    dynstr_at = dynsym_at + len(dynsym)
    text_at = dynstr_at + len(strings)
    sections_at = text_at + len(text)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sections_at, 0, header_size, 0, 0,
                          section_size, 4, 2)
    null = b"\0" * section_size
    # name, type (11: DYNSYM, 3: STRTAB, 1: PROGBITS), flags, addr, offset, size, link, info,
    # align, entsize
    dynsym_header = struct.pack("<IIQQQQIIQQ", 0, 11, 2, 0, dynsym_at, len(dynsym), 2, 1, 8, 24)
    dynstr_header = struct.pack("<IIQQQQIIQQ", 0, 3, 2, 0, dynstr_at, len(strings), 0, 0, 1, 0)
    text_header = struct.pack("<IIQQQQIIQQ", 0, 1, 6, TEXT_ADDRESS, text_at, len(text), 0, 0, 16,
                              0)
    return header + dynsym + strings + text + null + dynsym_header + dynstr_header + text_header


TEXT_ADDRESS = 0x1000
write("elf_symbols", "carries_openssl", elf([("SSL_read", True), ("SSL_write", True), ("SSL_new", True)]))
write("elf_symbols", "imports_openssl", elf([("SSL_read", False), ("SSL_write", False)]))
write("elf_symbols", "half", elf([("SSL_read", True), ("SSL_free", True)]))
# Built for Intel's CET: endbr64 first, then a push of rbp, a sub from rsp, a push of r12.
ENDBR64 = b"\xf3\x0f\x1e\xfa"
write("elf_symbols", "cet_openssl", elf(
    [("SSL_read", True), ("SSL_write", True), ("SSL_new", True)],
    [ENDBR64 + b"\x55", ENDBR64 + b"\x48\x83\xec\x18", ENDBR64 + b"\x41\x54"]))
