use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The upgraded connections (WebSockets, say) an [`Upstream`](super::Upstream) and its clones
/// joined to the upstream and that are still open: what a server counts and closes when it
/// stops, since they outlive the requests that opened them. From
/// [`Upstream::tunnels`](super::Upstream::tunnels).
#[derive(Clone, Default)]
pub struct Tunnels {
    closing: CancellationToken,
    open: TaskTracker,
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.open())
            .field("closing", &self.closing.is_cancelled())
            .finish()
    }
}

impl Tunnels {
    /// How many are open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Closes every open tunnel, both its connections, and waits until all have; tunnels
    /// opened from now on close at once. A WebSocket has no way to be told to finish on the
    /// byte stream a proxy sees, so a server calls this once its HTTP requests are drained.
    pub async fn close(&self) {
        self.closing.cancel();
        self.open.close();
        self.open.wait().await;
    }

    /// Copies bytes both ways between the client's connection and the upstream's once both are
    /// handed over, until either side closes, no byte went either way for `idle_timeout`, or
    /// [`close`](Self::close); `hold` is kept until then.
    pub(super) fn join<C, U, E, F>(
        &self,
        client: C,
        upstream: U,
        idle_timeout: Option<Duration>,
        hold: Option<ConnectionHold>,
    ) where
        C: Future<Output = Result<E, hyper::Error>> + Send + 'static,
        U: Future<Output = Result<F, hyper::Error>> + Send + 'static,
        E: AsyncRead + AsyncWrite + Unpin + Send,
        F: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let closing = self.closing.clone();
        self.open.spawn(async move {
            let joined = async move {
                let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
                    return;
                };
                let Some(idle_timeout) = idle_timeout else {
                    let (mut client, mut upstream) = (client, upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                };
                let activity = Arc::new(Activity::new());
                let mut client = Noted::new(client, activity.clone());
                let mut upstream = Noted::new(upstream, activity.clone());
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    () = activity.idle_for(idle_timeout) => {}
                }
            };
            // Either way both connections are dropped here, which closes them.
            closing.run_until_cancelled(joined).await;
            drop(hold);
        });
    }
}

/// When bytes last arrived from either side of a tunnel.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Ends once `timeout` has passed with no byte noted.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, noting each read that brought bytes.
struct Noted<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Noted<T> {
    fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Noted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.note();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Noted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a server holds while a client's connection is open (its place under a connection
/// limit, say), given to a request that asks to upgrade as a request extension: once
/// [`Upstream`](super::Upstream) joins that connection to the upstream's, the tunnel keeps it
/// until it closes, so an upgraded connection still counts as one.
#[derive(Clone)]
pub struct ConnectionHold(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl ConnectionHold {
    /// Holds `held` (an `Arc`'d semaphore permit, say) for as long as the connection is open.
    pub fn new(held: Arc<dyn Any + Send + Sync>) -> Self {
        Self(held)
    }
}

impl fmt::Debug for ConnectionHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionHold")
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_tunnel_copies_both_ways_until_closed_and_then_lets_go_of_its_hold() {
        let tunnels = Tunnels::default();
        let held = Arc::new(());
        let (mut client, client_end) = tokio::io::duplex(64);
        let (mut upstream, upstream_end) = tokio::io::duplex(64);
        tunnels.join(
            async { Ok(client_end) },
            async { Ok(upstream_end) },
            None,
            Some(ConnectionHold::new(held.clone())),
        );
        assert_eq!(tunnels.open(), 1);
        client.write_all(b"ping").await.unwrap();
        let mut read = [0; 4];
        upstream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"ping");
        upstream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"pong");
        assert_eq!(Arc::strong_count(&held), 2, "held while open");

        tokio::time::timeout(Duration::from_secs(10), tunnels.close())
            .await
            .expect("closed");
        assert_eq!(tunnels.open(), 0);
        assert_eq!(Arc::strong_count(&held), 1, "the hold was let go");
        // Both sides see the end of their stream.
        assert_eq!(client.read(&mut read).await.unwrap(), 0);
        assert_eq!(upstream.read(&mut read).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_tunnel_opened_after_close_closes_at_once() {
        let tunnels = Tunnels::default();
        tunnels.close().await;
        let (mut client, client_end) = tokio::io::duplex(64);
        let (_upstream, upstream_end) = tokio::io::duplex(64);
        tunnels.join(
            async { Ok(client_end) },
            async { Ok(upstream_end) },
            None,
            None,
        );
        let mut read = [0; 1];
        let ended = tokio::time::timeout(Duration::from_secs(10), client.read(&mut read)).await;
        assert_eq!(ended.expect("closed").unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_closes_once_no_byte_went_either_way_for_its_idle_timeout() {
        let tunnels = Tunnels::default();
        let (mut client, client_end) = tokio::io::duplex(64);
        let (mut upstream, upstream_end) = tokio::io::duplex(64);
        tunnels.join(
            async { Ok(client_end) },
            async { Ok(upstream_end) },
            Some(Duration::from_secs(10)),
            None,
        );
        let mut read = [0; 1];
        // Bytes every 7 s, one way and then the other, keep it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(7)).await;
            client.write_all(b"c").await.unwrap();
            upstream.read_exact(&mut read).await.unwrap();
            tokio::time::sleep(Duration::from_secs(7)).await;
            upstream.write_all(b"u").await.unwrap();
            client.read_exact(&mut read).await.unwrap();
        }
        assert_eq!(tunnels.open(), 1);
        let quiet = Instant::now();
        assert_eq!(client.read(&mut read).await.unwrap(), 0, "closed");
        assert_eq!(upstream.read(&mut read).await.unwrap(), 0, "closed");
        assert_eq!(quiet.elapsed().as_secs(), 10);
        assert_eq!(tunnels.open(), 0);
    }
}
