//! Talks to a running server over its admin socket, if one is running.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use kss_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::data_dir::DataDir;

/// A connection to the server running on `data_dir`, or `None` if none is running.
pub async fn connect(data_dir: &DataDir) -> Option<AdminClient<Channel>> {
    let path: PathBuf = data_dir.admin_socket();
    if !path.exists() {
        return None;
    }
    // The URI is not used: the connector dials the socket.
    let endpoint = Endpoint::try_from("http://localhost").ok()?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .ok()?;
    Some(AdminClient::new(channel))
}
