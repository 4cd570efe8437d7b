//! The operator's client of a keyserver instance's admin API: gRPC over mutual TLS to
//! the pod's IP, the server verified against the cluster's CA, the operator proving
//! itself with a client certificate from the same CA.

use std::net::IpAddr;
use std::time::Duration;

use kss_proto::v1::admin_client::AdminClient;
use kss_proto::v1::{
    ListInstancesRequest, ListInstancesResponse, LoadPolicyRequest, LoadPolicyResponse,
    StatusRequest, StatusResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::desired::ports;
use crate::error::{Error, Result};
use crate::pki::CertPem;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for every instance of one cluster.
#[derive(Clone)]
pub struct AdminTls {
    config: ClientTlsConfig,
}

impl AdminTls {
    pub fn new(ca_pem: &str, client: &CertPem, server_name: &str) -> Self {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(&client.cert, client.key.as_bytes()))
            .domain_name(server_name);
        AdminTls { config }
    }
}

/// One instance's admin API.
pub struct Instance {
    pub pod: String,
    client: AdminClient<Channel>,
}

/// What an instance said when asked for its status.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Serving its keyserver.
    Serving(StatusResponse),
    /// Running but refusing to serve: `reason` is the keyserver's reason word
    /// (`IdentityMismatch`, `IdentityMissing`, `MasterKeyMismatch`).
    Refusing { reason: String, message: String },
    /// Not reachable (starting, crashed, network).
    Unreachable(String),
}

fn admin_err(pod: &str, status: &Status) -> Error {
    Error::Admin {
        instance: pod.to_string(),
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

impl Instance {
    /// Connects to the pod at `ip`.
    pub async fn connect(pod: &str, ip: &str, tls: &AdminTls) -> Result<Self> {
        let host = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => ip.to_string(),
        };
        let endpoint = Endpoint::from_shared(format!("https://{host}:{}", ports::ADMIN))
            .and_then(|e| e.tls_config(tls.config.clone()))
            .map_err(|e| Error::Admin {
                instance: pod.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| Error::Admin {
            instance: pod.to_string(),
            message: format!("connecting: {e}"),
        })?;
        Ok(Instance {
            pod: pod.to_string(),
            client: AdminClient::new(channel),
        })
    }

    pub async fn status(&mut self) -> Probe {
        match self.client.status(StatusRequest {}).await {
            Ok(resp) => Probe::Serving(resp.into_inner()),
            Err(status) if status.code() == Code::FailedPrecondition => {
                let message = status.message().to_string();
                let reason = message
                    .split_once(':')
                    .map(|(word, _)| word.trim().to_string())
                    .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric()))
                    .unwrap_or_else(|| "Refusing".to_string());
                Probe::Refusing { reason, message }
            }
            Err(status) => Probe::Unreachable(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    pub async fn list_instances(&mut self) -> Result<ListInstancesResponse> {
        self.client
            .list_instances(ListInstancesRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| admin_err(&self.pod, &s))
    }

    /// Stores `source` as the policy in force (a no-op when it already is). An invalid
    /// policy is `Err(Ok(message))`; a transport or server failure `Err(Err(..))`.
    pub async fn load_policy(
        &mut self,
        source: &str,
    ) -> std::result::Result<LoadPolicyResponse, std::result::Result<String, Error>> {
        match self
            .client
            .load_policy(LoadPolicyRequest {
                source: source.to_string(),
            })
            .await
        {
            Ok(resp) => Ok(resp.into_inner()),
            Err(s) if s.code() == Code::InvalidArgument => Err(Ok(s.message().to_string())),
            Err(s) => Err(Err(admin_err(&self.pod, &s))),
        }
    }
}

/// Probes one pod: connects and asks for its status.
pub async fn probe(pod: &str, ip: &str, tls: &AdminTls) -> (Probe, Option<Instance>) {
    match Instance::connect(pod, ip, tls).await {
        Ok(mut instance) => {
            let probe = instance.status().await;
            (probe, Some(instance))
        }
        Err(e) => (Probe::Unreachable(e.to_string()), None),
    }
}
