//! The data path of the proxy: one accepted client connection joined to one backend
//! connection, and a plain accept-and-forward loop for a single port.
//!
//! [`pipe`] is what the daemon runs for every connection; [`run_forward`] (behind the hidden
//! `berth forward` command) runs exactly that on one port, for benchmarks and debugging. Bytes
//! move with `splice(2)` when they come in bulk and through a copy when they come as small
//! messages (see the `splice` module).
//!
//! Limits: no timeouts here. A half-closed connection whose other side never closes stays open,
//! as TCP allows; idle policy belongs to the caller.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::splice::{self, Mode};

/// Pending connections the kernel queues before `accept`: enough for a burst of browser tabs
/// or a benchmark opening all its connections at once.
const BACKLOG: u32 = 1024;

/// Counters of one forwarded port, updated as bytes move (Relaxed: they are statistics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections handed to [`pipe`].
    pub connections_total: AtomicU64,
    /// Connections being forwarded now.
    pub active: AtomicU64,
    /// Bytes delivered client → backend.
    pub bytes_in: AtomicU64,
    /// Bytes delivered backend → client.
    pub bytes_out: AtomicU64,
    /// Backend connections made inside the container's network namespace, bypassing Podman's
    /// port forwarder (the rest went to the published port).
    pub inside_total: AtomicU64,
    /// Of the bytes delivered (both ways), those that moved by `splice(2)`, never entering
    /// user space.
    pub spliced: AtomicU64,
}

/// Decrements `active` however [`pipe`] ends, also when its task is dropped.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Forwards `client` ⇄ `backend` until both directions have ended and returns the bytes moved
/// (client → backend, backend → client).
///
/// End of stream on one side is passed on as a half-close of the other, so a client that shuts
/// down its sending side still receives the whole reply. A side that resets ends the direction
/// towards it; that is not an error.
pub async fn pipe(
    client: TcpStream,
    backend: TcpStream,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    pipe_with(client, backend, counters, Mode::Auto).await
}

async fn pipe_with(
    mut client: TcpStream,
    mut backend: TcpStream,
    counters: &Counters,
    mode: Mode,
) -> io::Result<(u64, u64)> {
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(&counters.active);
    // Request/response traffic: a small reply must leave at once, not wait for Nagle.
    client.set_nodelay(true)?;
    backend.set_nodelay(true)?;
    splice::bidirectional(
        &mut client,
        &mut backend,
        &counters.bytes_in,
        &counters.bytes_out,
        &counters.spliced,
        mode,
    )
    .await
}

/// A listening socket on `addr` with `SO_REUSEADDR` (a restart does not wait out TIME_WAIT)
/// and a backlog of [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections on `listener` forever and forwards each to `to`, one task per
/// connection. Drop the future to stop accepting; connections already running continue.
pub async fn serve(listener: TcpListener, to: SocketAddr, counters: Arc<Counters>) {
    serve_with(listener, to, counters, Mode::Auto).await;
}

async fn serve_with(listener: TcpListener, to: SocketAddr, counters: Arc<Counters>, mode: Mode) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Usually out of descriptors: pause instead of spinning on the same error.
                tracing::warn!(%e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let backend = match TcpStream::connect(to).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(%e, %to, "connect to backend");
                    return;
                }
            };
            if let Err(e) = pipe_with(client, backend, &counters, mode).await {
                tracing::debug!(%e, "forwarding ended with an error");
            }
        });
    }
}

/// `berth forward`: listens on `listen` and forwards every connection to `to` with the
/// daemon's code, until the process is stopped.
pub async fn run_forward(listen: SocketAddr, to: SocketAddr) -> io::Result<()> {
    let listener = bind(listen)?;
    serve(listener, to, Arc::new(Counters::default())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::task::JoinHandle;

    const MIB: usize = 1 << 20;
    const MODES: [Mode; 3] = [Mode::Auto, Mode::Copy, Mode::Splice];

    /// Deterministic bytes: `len` bytes of xorshift output from `seed`.
    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// FNV-1a and length of a byte stream, to compare streams without keeping both copies.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Sum(u64, u64);

    impl Sum {
        fn new() -> Self {
            Sum(0xcbf2_9ce4_8422_2325, 0)
        }
        fn add(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            self.1 += bytes.len() as u64;
        }
        fn of(bytes: &[u8]) -> Self {
            let mut s = Sum::new();
            s.add(bytes);
            s
        }
    }

    async fn read_all_sum<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> Sum {
        let mut sum = Sum::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                return sum;
            }
            sum.add(&buf[..n]);
        }
    }

    /// A forwarder on an ephemeral port in front of `backend`.
    struct Proxy {
        addr: SocketAddr,
        counters: Arc<Counters>,
        task: JoinHandle<()>,
    }

    impl Proxy {
        fn start(backend: SocketAddr, mode: Mode) -> Proxy {
            let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind proxy");
            let addr = listener.local_addr().expect("proxy addr");
            let counters = Arc::new(Counters::default());
            let task = tokio::spawn(serve_with(listener, backend, Arc::clone(&counters), mode));
            Proxy {
                addr,
                counters,
                task,
            }
        }

        fn get(&self, c: fn(&Counters) -> &AtomicU64) -> u64 {
            c(&self.counters).load(Ordering::Relaxed)
        }

        /// Waits until every forwarded connection has finished.
        async fn idle(&self) {
            for _ in 0..500 {
                if self.get(|c| &c.active) == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("connections still active: {}", self.get(|c| &c.active));
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn backend_listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let a = l.local_addr().expect("backend addr");
        (l, a)
    }

    /// 32 MiB each way at the same time, through `pipe_with` directly.
    async fn bulk_both_ways(mode: Mode) {
        let (bl, baddr) = backend_listener().await;
        let (pl, paddr) = backend_listener().await;
        let up = data(1, 32 * MIB);
        let down = data(2, 32 * MIB + 12345);
        let (up_sum, down_sum) = (Sum::of(&up), Sum::of(&down));

        let backend = tokio::spawn(async move {
            let (s, _) = bl.accept().await.expect("backend accept");
            let (r, mut w) = s.into_split();
            let send = async move {
                w.write_all(&down).await.expect("backend write");
                w.shutdown().await.expect("backend shutdown");
            };
            let (got, ()) = tokio::join!(read_all_sum(r), send);
            got
        });
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let proxy = tokio::spawn(async move {
            let (client, _) = pl.accept().await.expect("proxy accept");
            let backend = TcpStream::connect(baddr).await.expect("connect backend");
            pipe_with(client, backend, &c2, mode).await
        });

        let client = TcpStream::connect(paddr).await.expect("connect proxy");
        let (r, mut w) = client.into_split();
        let send = async move {
            // Uneven writes, so that both small and bulk transfers happen.
            for chunk in up.chunks(300 * 1024 + 17) {
                w.write_all(chunk).await.expect("client write");
            }
            w.shutdown().await.expect("client shutdown");
        };
        let (client_got, ()) = tokio::join!(read_all_sum(r), send);
        let backend_got = backend.await.expect("backend task");
        let moved = proxy.await.expect("proxy task").expect("pipe");

        assert_eq!(
            backend_got, up_sum,
            "{mode:?}: client → backend stream differs"
        );
        assert_eq!(
            client_got, down_sum,
            "{mode:?}: backend → client stream differs"
        );
        assert_eq!(moved, (up_sum.1, down_sum.1));
        assert_eq!(counters.bytes_in.load(Ordering::Relaxed), up_sum.1);
        assert_eq!(counters.bytes_out.load(Ordering::Relaxed), down_sum.1);
        assert_eq!(counters.connections_total.load(Ordering::Relaxed), 1);
        assert_eq!(counters.active.load(Ordering::Relaxed), 0);
        let spliced = counters.spliced.load(Ordering::Relaxed);
        let total = up_sum.1 + down_sum.1;
        match mode {
            // Every byte went through splice, none through a copy: a process-wide fall back
            // to copying would fail here.
            Mode::Splice => assert_eq!(spliced, total, "{mode:?}"),
            // Bulk data is spliced; only what came before a big read was copied.
            Mode::Auto => assert!(spliced > total / 2, "{mode:?}: {spliced} of {total}"),
            Mode::Copy => assert_eq!(spliced, 0, "{mode:?}"),
        }
    }

    #[tokio::test]
    async fn bulk_32mib_both_ways() {
        bulk_both_ways(Mode::Auto).await;
    }

    #[tokio::test]
    async fn bulk_32mib_both_ways_copy_only() {
        bulk_both_ways(Mode::Copy).await;
    }

    #[tokio::test]
    async fn bulk_32mib_both_ways_splice_only() {
        bulk_both_ways(Mode::Splice).await;
    }

    #[tokio::test]
    async fn client_half_close_still_gets_the_reply() {
        for mode in MODES {
            let (bl, baddr) = backend_listener().await;
            let proxy = Proxy::start(baddr, mode);
            let backend = tokio::spawn(async move {
                let (mut s, _) = bl.accept().await.expect("accept");
                let mut req = Vec::new();
                // Only the client's half-close, passed on, ends this read.
                s.read_to_end(&mut req).await.expect("read request");
                let reply = format!("got {} bytes", req.len());
                s.write_all(reply.as_bytes()).await.expect("reply");
                req
            });

            let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
            c.write_all(b"request body").await.expect("write");
            c.shutdown().await.expect("half-close");
            let mut reply = String::new();
            c.read_to_string(&mut reply).await.expect("read reply");

            assert_eq!(backend.await.expect("backend"), b"request body", "{mode:?}");
            assert_eq!(reply, "got 12 bytes", "{mode:?}");
            drop(c);
            proxy.idle().await;
            assert_eq!(proxy.get(|c| &c.bytes_in), 12, "{mode:?}");
            assert_eq!(proxy.get(|c| &c.bytes_out), 12, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn backend_closing_first_ends_the_connection() {
        for mode in MODES {
            let (bl, baddr) = backend_listener().await;
            let proxy = Proxy::start(baddr, mode);
            let backend = tokio::spawn(async move {
                let (mut s, _) = bl.accept().await.expect("accept");
                s.write_all(b"bye").await.expect("write");
                // Dropped: the backend closes both ways without reading anything.
            });

            let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
            let mut got = Vec::new();
            c.read_to_end(&mut got)
                .await
                .expect("read until the backend's close");
            assert_eq!(got, b"bye", "{mode:?}");
            backend.await.expect("backend");
            // Writing into the dead connection must not hang the proxy.
            let _may_fail = c.write_all(b"late").await;
            drop(c);
            proxy.idle().await;
            assert_eq!(proxy.get(|c| &c.connections_total), 1, "{mode:?}");
            assert_eq!(proxy.get(|c| &c.bytes_out), 3, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn backend_reset_ends_the_connection() {
        for mode in MODES {
            let (bl, baddr) = backend_listener().await;
            let proxy = Proxy::start(baddr, mode);
            let backend = tokio::spawn(async move {
                let (s, _) = bl.accept().await.expect("accept");
                // Linger 0: closing sends a reset instead of an end of stream.
                s.set_zero_linger().expect("linger");
                drop(s);
            });
            let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
            backend.await.expect("backend");
            let mut got = Vec::new();
            // End of stream or a reset, but no hang.
            let _either = c.read_to_end(&mut got).await;
            assert!(got.is_empty(), "{mode:?}");
            drop(c);
            proxy.idle().await;
        }
    }

    #[tokio::test]
    async fn backend_refusing_the_connection_closes_the_client() {
        // A port with nothing listening: bind, note the address, close.
        let (bl, baddr) = backend_listener().await;
        drop(bl);
        let proxy = Proxy::start(baddr, Mode::Auto);
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{r:?}");
        assert_eq!(proxy.get(|c| &c.connections_total), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_connections_and_counters() {
        const CONNS: usize = 200;
        // Over SPLICE_MIN, so that automatic mode splices part of it.
        const LEN: usize = 100 * 1024 + 7;
        let (bl, baddr) = backend_listener().await;
        let echo = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = bl.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.expect("echo");
                    w.shutdown().await.expect("echo shutdown");
                });
            }
        });
        let proxy = Proxy::start(baddr, Mode::Auto);
        let addr = proxy.addr;
        let clients: Vec<_> = (0..CONNS)
            .map(|i| {
                tokio::spawn(async move {
                    let msg = data(i as u64 + 10, LEN);
                    let s = TcpStream::connect(addr).await.expect("connect");
                    let (r, mut w) = s.into_split();
                    let want = Sum::of(&msg);
                    let send = async move {
                        w.write_all(&msg).await.expect("write");
                        w.shutdown().await.expect("shutdown");
                    };
                    let (got, ()) = tokio::join!(read_all_sum(r), send);
                    assert_eq!(got, want, "connection {i}");
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client");
        }
        proxy.idle().await;
        let total = (CONNS * LEN) as u64;
        assert_eq!(proxy.get(|c| &c.connections_total), CONNS as u64);
        assert_eq!(proxy.get(|c| &c.active), 0);
        assert_eq!(proxy.get(|c| &c.bytes_in), total);
        assert_eq!(proxy.get(|c| &c.bytes_out), total);
        echo.abort();
    }

    #[tokio::test]
    async fn counters_show_progress_while_a_connection_is_open() {
        for mode in MODES {
            let (bl, baddr) = backend_listener().await;
            let proxy = Proxy::start(baddr, mode);
            let backend = tokio::spawn(async move {
                let (mut s, _) = bl.accept().await.expect("accept");
                let mut buf = vec![0u8; 1000];
                s.read_exact(&mut buf).await.expect("read");
                s.write_all(&buf[..10]).await.expect("write");
                s
            });
            let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
            c.write_all(&[7u8; 1000]).await.expect("write");
            let mut back = [0u8; 10];
            c.read_exact(&mut back).await.expect("read");
            assert_eq!(proxy.get(|c| &c.active), 1, "{mode:?}");
            assert_eq!(proxy.get(|c| &c.bytes_in), 1000, "{mode:?}");
            assert_eq!(proxy.get(|c| &c.bytes_out), 10, "{mode:?}");
            drop(c);
            drop(backend.await.expect("backend"));
            proxy.idle().await;
        }
    }

    #[tokio::test]
    async fn idle_connections_hold_no_pipes() {
        // Pipes go back to the thread's pool after each transfer: a second transfer on the
        // same thread reuses them instead of making new ones.
        let (bl, baddr) = backend_listener().await;
        let proxy = Proxy::start(baddr, Mode::Splice);
        let backend = tokio::spawn(async move {
            let (mut s, _) = bl.accept().await.expect("accept");
            let mut buf = [0u8; 4];
            for _ in 0..2 {
                s.read_exact(&mut buf).await.expect("read");
                s.write_all(&buf).await.expect("write");
            }
            s
        });
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        for _ in 0..2 {
            c.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"ping");
        }
        let pooled = super::splice::pooled_pipes();
        assert!(
            (1..=2).contains(&pooled),
            "{pooled} pipes pooled; an idle connection should hold none"
        );
        drop(c);
        drop(backend.await.expect("backend"));
        proxy.idle().await;
    }
}
