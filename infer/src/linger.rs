//! Lingering close for the plain server's connections: when the server closes a connection whose
//! client may still be sending (an upload shed with 503 before its body was read, one refused
//! with 413), it stops writing, then reads and drops what still arrives for a bounded while
//! before it closes.
//!
//! Closing a TCP socket with unread data makes the kernel answer with a reset, and a client that
//! is still writing its body then sees its write fail (or its unread answer thrown away) instead
//! of the 503 it was sent: the same failure Apache's and nginx's lingering close exist for. The
//! read side stays open only after the answer is out, so a client that reads while it writes
//! (most HTTP clients) stops at once, and one that writes all of its body first has it read and
//! dropped. Bounded in places, bytes and time ([`Linger`]): past them, a connection is closed
//! as before. How each lingering ended ([`Ending`]) is counted in the server's metrics, so that
//! an operator can see how many clients were closed under.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// How much lingering the server allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// Connections lingering at once; a connection closed while all of them are taken is closed
    /// at once.
    pub places: usize,
    /// Bytes read and dropped from one connection before it is closed anyway: at least the body
    /// limit, so that a client that writes its whole body before it reads sees its answer.
    pub max_bytes: u64,
    /// How long one connection may linger in all.
    pub max_time: Duration,
    /// How long a lingering connection may send nothing before it is closed.
    pub idle: Duration,
}

/// The default [`Linger::places`]. A place holds no buffer of its own (what arrives is dropped
/// in the kernel, [`discard`]), only the connection's socket for at most [`Linger::max_time`].
/// Clients that came at once are shed at once when their admission wait ends, so the places
/// are sized for such a burst of a thousand clients, not for the average.
pub const DEFAULT_PLACES: usize = 1024;

/// The most bytes one [`discard`] drops.
const CHUNK: usize = 1024 * 1024;

impl Linger {
    /// Lingering for a server whose request bodies are at most `max_body` bytes.
    pub fn for_body_limit(max_body: usize) -> Self {
        Self {
            places: DEFAULT_PLACES,
            max_bytes: u64::try_from(max_body).unwrap_or(u64::MAX),
            max_time: Duration::from_secs(5),
            idle: Duration::from_secs(1),
        }
    }
}

/// A TCP listener whose connections linger when they are closed.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    linger: Linger,
    places: Arc<Semaphore>,
    metrics: Option<Arc<Metrics>>,
}

impl Listener {
    /// Lingering within `linger`, each ending counted in `metrics` where there are some.
    pub fn new(inner: TcpListener, linger: Linger, metrics: Option<Arc<Metrics>>) -> Self {
        let places = Arc::new(Semaphore::new(linger.places));
        Self {
            inner,
            shared: Arc::new(Shared {
                linger,
                places,
                metrics,
            }),
        }
    }
}

/// How a connection that had to linger was closed: the `outcome` label of
/// `infer_lingering_closes_total`. [`Ending::Refused`], [`Ending::OverBytes`] and
/// [`Ending::OverTime`] may close it with data unread, so that the client sees a reset;
/// [`Ending::Drained`] and [`Ending::Idle`] leave nothing unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed its side: everything it sent was read.
    Drained,
    /// No place was free ([`Linger::places`]): closed at once.
    Refused,
    /// It sent more than [`Linger::max_bytes`].
    OverBytes,
    /// It was still sending after [`Linger::max_time`].
    OverTime,
    /// It sent nothing for [`Linger::idle`] and did not close.
    Idle,
    /// Its socket failed (most often: the client reset it first).
    Failed,
}

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::Refused => "refused",
            Self::OverBytes => "over_bytes",
            Self::OverTime => "over_time",
            Self::Idle => "idle",
            Self::Failed => "failed",
        }
    }
}

impl Shared {
    fn count(&self, ending: Ending) {
        if let Some(metrics) = &self.metrics {
            metrics.record_lingering(ending.label());
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Lingering;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept: it logs and retries on errors, and sets nothing on the socket.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let io = Lingering {
            stream: Some(stream),
            shared: Arc::clone(&self.shared),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that lingers when it is dropped ([`Listener`]).
#[derive(Debug)]
pub struct Lingering {
    /// Taken only when dropped.
    stream: Option<TcpStream>,
    shared: Arc<Shared>,
}

impl Lingering {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // The usual end of a keep-alive connection: the client closed it and sent nothing more.
        let mut probe = [0; 1];
        match stream.try_read(&mut probe) {
            Ok(0) => return,
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
            Ok(_) | Err(_) => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(place) = Arc::clone(&self.shared.places).try_acquire_owned() else {
            self.shared.count(Ending::Refused);
            return;
        };
        let shared = Arc::clone(&self.shared);
        runtime.spawn(async move {
            let ending = linger(stream, shared.linger, place).await;
            shared.count(ending);
        });
    }
}

/// Ends `stream`'s writing, then reads and drops what arrives until the client closes or a bound
/// of `linger` is reached; then closes it.
async fn linger(mut stream: TcpStream, linger: Linger, _place: OwnedSemaphorePermit) -> Ending {
    let drain = async {
        // The end of the answer, if hyper did not send it already; an error means the client is
        // gone, and there is nothing left to read.
        if stream.shutdown().await.is_err() {
            return Ending::Failed;
        }
        let mut left = linger.max_bytes;
        while left > 0 {
            let chunk = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let dropped = async {
                loop {
                    stream.readable().await?;
                    match stream.try_io(Interest::READABLE, || discard(&stream, chunk)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        other => break other,
                    }
                }
            };
            match tokio::time::timeout(linger.idle, dropped).await {
                Err(_) => return Ending::Idle,
                Ok(Err(_)) => return Ending::Failed,
                Ok(Ok(0)) => return Ending::Drained,
                Ok(Ok(n)) => left = left.saturating_sub(n as u64),
            }
        }
        Ending::OverBytes
    };
    tokio::time::timeout(linger.max_time, drain)
        .await
        .unwrap_or(Ending::OverTime)
}

/// Drops up to `chunk` bytes that have arrived on `stream`; how many (0: the client closed).
/// On Linux, without copying them: `recv` with `MSG_TRUNC` on a TCP socket discards what it
/// would have read (tcp(7)), so draining a shed upload costs no more than the reset it replaces.
#[cfg(target_os = "linux")]
fn discard(stream: &TcpStream, chunk: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the kernel writes nothing under MSG_TRUNC; were it to, a null buffer would make
    // the call fail with EFAULT, never write into this process's memory.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            std::ptr::null_mut(),
            chunk,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Drops up to `chunk` bytes that have arrived on `stream`; how many (0: the client closed).
#[cfg(not(target_os = "linux"))]
fn discard(stream: &TcpStream, chunk: usize) -> io::Result<usize> {
    let mut buffer = vec![0; chunk.min(64 * 1024)];
    stream.try_read(&mut buffer)
}
