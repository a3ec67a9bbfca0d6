//! Write coalescing for HTTP/2 connections.
//!
//! h2 flushes its connection after every DATA frame it writes (a frame larger than a
//! few hundred bytes is chained, not copied, so the next one waits for a flush), and
//! the TLS stream under it turns each write into a record and a `writev` at once. A
//! connection carrying ten watches then makes ten records and ten system calls for
//! one stored change, and every event pays the loopback TCP path on both ends.
//!
//! [`Coalesce`] sits between hyper and the TLS stream. A flush of a small buffer is
//! acknowledged without writing and the connection's task is woken again; the bytes
//! go out on that next turn of the task (h2 reads before it writes each turn), after
//! the other tasks that were ready have queued their frames on the connection too.
//! Past [`LIMIT`] bytes a write or flush goes to the socket at once, and once the socket
//! is found full flushes wait for it as a plain stream's would, so a slow reader still
//! pushes back and the task does not spin. Only for HTTP/2 (the connection is served as
//! HTTP/2 only): an HTTP/1.1 connection does not read while it streams a response, so it
//! would not take its next turn.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back at most before a write goes to the socket regardless.
pub const LIMIT: usize = 128 * 1024;

/// An HTTP/2 connection's stream whose flushes wait for the task's next turn.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Written from `buf` already (the rest is still to go).
    sent: usize,
    /// A flush was acknowledged while bytes were held back.
    deferred: bool,
    /// The last try to write them found the socket full: flushes wait for it (with the
    /// socket's waker) instead of waking the task again, which would spin.
    blocked: bool,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            deferred: false,
            blocked: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes what is held back; then flushes the stream under it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let written = Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]);
            let Poll::Ready(n) = written else {
                self.blocked = true;
                return Poll::Pending;
            };
            let n = n?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.buf.capacity() > LIMIT {
            // A burst's buffer is not kept by an idle connection.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        if Pin::new(&mut self.inner).poll_flush(cx)?.is_pending() {
            self.blocked = true;
            return Poll::Pending;
        }
        self.deferred = false;
        self.blocked = false;
        Poll::Ready(Ok(()))
    }

    /// Room for more: below [`LIMIT`], or once what is held back has gone.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The task's next turn: what an earlier flush held back goes now. A full
        // socket leaves it for later (the task is woken when it drains).
        if this.deferred
            && let Poll::Ready(Err(e)) = this.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        let mut n = 0;
        for slice in data {
            this.buf.extend_from_slice(slice);
            n += slice.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if this.buf.len() >= LIMIT || this.blocked {
            return this.poll_drain(cx);
        }
        // Held back until the task's next turn, which this wake guarantees: woken
        // from its own poll, the task goes to the back of the run queue.
        this.deferred = true;
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_flush_is_written_on_the_next_read_and_a_shutdown_writes_everything() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near);
        io.write_all(b"one").await.expect("write");
        io.flush().await.expect("flush");
        io.write_all(b"two").await.expect("write");
        io.flush().await.expect("flush");
        // Nothing has gone yet: both flushes were held back.
        let mut got = [0u8; 16];
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut got));
        assert!(
            pending.await.is_err(),
            "held-back bytes went before the next turn"
        );
        // The next turn reads first, which writes what was held back.
        far.write_all(b"ping").await.expect("far write");
        let mut read = [0u8; 4];
        io.read_exact(&mut read).await.expect("read");
        assert_eq!(&read, b"ping");
        let n = far.read(&mut got).await.expect("far read");
        assert_eq!(&got[..n], b"onetwo");
        io.write_all(b"three").await.expect("write");
        io.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.expect("far read");
        assert_eq!(rest, b"three");
    }

    #[test]
    fn a_full_socket_makes_flushes_wait_instead_of_waking_the_task() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A pipe that takes 8 bytes and then is full (nobody reads the far end).
        let (near, _far) = tokio::io::duplex(8);
        let mut io = Coalesce::new(near);
        let mut pinned = Pin::new(&mut io);
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"0123456789"),
            Poll::Ready(Ok(10))
        ));
        assert!(matches!(
            pinned.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "held back: the task is woken once"
        );
        // The next turn's read tries to write and finds the pipe full.
        let mut space = [0u8; 4];
        let mut out = ReadBuf::new(&mut space);
        assert!(pinned.as_mut().poll_read(&mut cx, &mut out).is_pending());
        let woken = count.0.load(Ordering::SeqCst);
        // Flushes now wait for the pipe rather than wake the task (no spinning).
        for _ in 0..3 {
            assert!(pinned.as_mut().poll_flush(&mut cx).is_pending());
        }
        assert_eq!(count.0.load(Ordering::SeqCst), woken);
    }

    #[tokio::test]
    async fn past_the_limit_writes_go_at_once() {
        let (near, mut far) = tokio::io::duplex(4 * LIMIT);
        let mut io = Coalesce::new(near);
        let big = vec![7u8; LIMIT + 10];
        io.write_all(&big).await.expect("write");
        io.flush().await.expect("flush");
        let mut got = vec![0u8; big.len()];
        far.read_exact(&mut got).await.expect("far read");
        assert_eq!(got, big);
    }
}
