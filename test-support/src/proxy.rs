//! A TCP proxy on loopback between one client and one server, with the network faults a
//! test needs: a cut (every connection closed, new ones refused at once, as after a reset)
//! and a black hole (connections stay open and nothing gets through either way, as on a
//! route that drops packets, where only a timeout tells the client).

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Open,
    /// Closes every connection and each new one at once.
    Cut,
    /// Keeps connections open and forwards nothing.
    BlackHole,
}

pub struct TcpProxy {
    address: String,
    link: watch::Sender<Link>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards a loopback port to `upstream` (`host:port`), starting in state `link`.
    pub async fn start(upstream: String, link: Link) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (link, watching) = watch::channel(link);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *watching.borrow() == Link::Cut {
                        continue; // dropped: closed at once
                    }
                    let task = tokio::spawn(forward(client, upstream.clone(), watching.clone()));
                    connections.lock().expect("lock").push(task);
                }
            }
        });
        Self {
            address,
            link,
            connections,
            accept,
        }
    }

    /// `host:port` of the proxy.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
        if link == Link::Cut {
            for task in self.connections.lock().expect("lock").drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set(Link::Cut);
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, upstream: String, link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::select! {
        () = pump(&mut client_read, &mut server_write, link.clone()) => {}
        () = pump(&mut server_read, &mut client_write, link) => {}
    }
}

/// Copies `from` to `to` while the link is open; in a black hole what arrives is dropped.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if *link.borrow() == Link::BlackHole {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
