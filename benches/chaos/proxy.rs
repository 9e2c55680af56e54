//! A TCP proxy between one node and PostgreSQL that can cut the node off: its connections
//! closed (and new ones closed at once), or held open while nothing passes (a partition), until
//! the cut ends.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::schedule::Cut;

/// The cut in force, if any; each change of it ends every connection open at the time.
#[derive(Clone)]
pub(crate) struct DbProxy {
    pub(crate) port: u16,
    state: Arc<watch::Sender<(u64, Option<Cut>)>>,
}

impl DbProxy {
    /// Listens on a free port, forwarding to `upstream` (PostgreSQL's port).
    pub(crate) async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let port = listener.local_addr().expect("an address").port();
        let (state, _) = watch::channel((0u64, None));
        let proxy = DbProxy {
            port,
            state: Arc::new(state),
        };
        let state = proxy.state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(forward(client, upstream, state.subscribe()));
            }
        });
        proxy
    }

    pub(crate) fn cut(&self, how: Cut) {
        self.state.send_modify(|(generation, cut)| {
            *generation += 1;
            *cut = Some(how);
        });
    }

    /// Ends the cut; connections held by a black hole are closed now.
    pub(crate) fn heal(&self) {
        self.state.send_modify(|(generation, cut)| {
            *generation += 1;
            *cut = None;
        });
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: u16,
    mut state: watch::Receiver<(u64, Option<Cut>)>,
) {
    let (generation, cut) = *state.borrow_and_update();
    match cut {
        Some(Cut::Close) => return,
        Some(Cut::Blackhole) => {
            // Held open, silent, until the cut ends; then closed.
            let _ = state.wait_for(|(now, _)| *now != generation).await;
            return;
        }
        None => {}
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let (generation, cut) = *state.borrow_and_update();
                match cut {
                    Some(Cut::Blackhole) => {
                        let _ = state.wait_for(|(now, _)| *now != generation).await;
                        return;
                    }
                    _ => return,
                }
            }
        }
    }
}
