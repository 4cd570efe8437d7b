//! The operator's client of a keyserver instance's admin API: gRPC over mutual TLS to
//! the pod's IP, the server verified against the cluster's CA, the operator proving
//! itself with a client certificate from the same CA.

use std::net::IpAddr;
use std::time::Duration;

use kss_proto::details;
use kss_proto::v1::admin_client::AdminClient;
use kss_proto::v1::{
    BackupHolder, IssueBackupKeyRequest, IssueBackupKeyResponse, ListInstancesRequest,
    ListInstancesResponse, LoadPolicyRequest, LoadPolicyResponse, PolicyError, PolicyErrorKind,
    PolicyRejection, Refusal, RefusalReason, StatusRequest, StatusResponse,
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
    /// Running but refusing to serve: the keyserver's typed reason (`Unspecified` from a
    /// keyserver too old to send one) and its message.
    Refusing {
        reason: RefusalReason,
        message: String,
        /// Its kss version (empty from a keyserver too old to send it).
        kss_version: String,
    },
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
        probe_of(
            self.client
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner()),
        )
    }

    pub async fn list_instances(&mut self) -> Result<ListInstancesResponse> {
        self.client
            .list_instances(ListInstancesRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| admin_err(&self.pod, &s))
    }

    /// A new backup key of the instance's keyserver for `holders` ((name, public key
    /// hex)), `threshold` of whom must approve a recovery (`kss save-backup-key` over the
    /// admin API).
    pub async fn issue_backup_key(
        &mut self,
        holders: Vec<(String, String)>,
        threshold: u32,
        allow_weak: bool,
    ) -> Result<IssueBackupKeyResponse> {
        self.client
            .issue_backup_key(IssueBackupKeyRequest {
                holders: holders
                    .into_iter()
                    .map(|(name, public_key)| BackupHolder { name, public_key })
                    .collect(),
                threshold,
                allow_weak,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| admin_err(&self.pod, &s))
    }

    /// Stores `source` as the policy in force (a no-op when it already is). An invalid
    /// policy is `Err(Ok(rejection))`; a transport or server failure `Err(Err(..))`.
    pub async fn load_policy(
        &mut self,
        source: &str,
    ) -> std::result::Result<LoadPolicyResponse, std::result::Result<PolicyRejection, Error>> {
        match self
            .client
            .load_policy(LoadPolicyRequest {
                source: source.to_string(),
            })
            .await
        {
            Ok(resp) => Ok(resp.into_inner()),
            Err(s) if s.code() == Code::InvalidArgument => Err(Ok(rejection_of(&s))),
            Err(s) => Err(Err(admin_err(&self.pod, &s))),
        }
    }
}

/// What a Status answer says: a refusal is FAILED_PRECONDITION with a typed
/// `kss.v1.Refusal` detail (without one, from an older keyserver: reason `Unspecified`, the
/// status's message shown as it is).
fn probe_of(answer: std::result::Result<StatusResponse, Status>) -> Probe {
    match answer {
        Ok(status) => Probe::Serving(status),
        Err(status) if status.code() == Code::FailedPrecondition => {
            match details::find::<Refusal>(&status) {
                Some(refusal) => Probe::Refusing {
                    reason: refusal.reason(),
                    message: refusal.message,
                    kss_version: refusal.kss_version,
                },
                None => Probe::Refusing {
                    reason: RefusalReason::Unspecified,
                    message: status.message().to_string(),
                    kss_version: String::new(),
                },
            }
        }
        Err(status) => Probe::Unreachable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Why LoadPolicy rejected a policy: its typed `kss.v1.PolicyRejection` detail (without
/// one, from an older keyserver: one error of kind `Unspecified` with the status's message).
fn rejection_of(status: &Status) -> PolicyRejection {
    details::find::<PolicyRejection>(status).unwrap_or_else(|| PolicyRejection {
        errors: vec![PolicyError {
            kind: PolicyErrorKind::Unspecified as i32,
            location: None,
            message: status.message().to_string(),
        }],
    })
}

/// A rejection for people: each error's location (as the policy engine writes it) and
/// text, e.g. `decrypt: rule set 0, rule 0 (per-profile-throttle-rule), argument
/// 'per_days' (line 3): unknown argument (...)`.
pub fn rejection_text(rejection: &PolicyRejection) -> String {
    let texts: Vec<String> = rejection
        .errors
        .iter()
        .map(|e| {
            let location = e
                .location
                .as_ref()
                .map(|at| {
                    let index = |i: Option<u32>| i.and_then(|i| usize::try_from(i).ok());
                    let text = |t: &str| (!t.is_empty()).then(|| t.to_string());
                    kss_policy::Location {
                        request_type: text(&at.request_type),
                        rule_set: index(at.rule_set),
                        rule: index(at.rule),
                        rule_name: text(&at.rule_name),
                        argument: text(&at.argument),
                        line: index((at.line > 0).then_some(at.line)),
                        column: index((at.column > 0).then_some(at.column)),
                    }
                    .to_string()
                })
                .unwrap_or_default();
            if location.is_empty() {
                e.message.clone()
            } else {
                format!("{location}: {}", e.message)
            }
        })
        .collect();
    if texts.is_empty() {
        "no reason given".to_string()
    } else {
        texts.join("; ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use kss_proto::v1::PolicyLocation;

    fn status_response(id: &str) -> StatusResponse {
        StatusResponse {
            keyserver_id: id.into(),
            ..StatusResponse::default()
        }
    }

    #[test]
    fn a_refusal_is_read_from_its_typed_detail() {
        let refusal = Refusal {
            reason: RefusalReason::MasterKeyMismatch as i32,
            message: "MasterKeyMismatch: the master key cannot open keyserver K's secret".into(),
            kss_version: "0.1.0".into(),
        };
        // The status's own message is not what is read.
        let status = details::status_with(Code::FailedPrecondition, "IdentityMissing: x", &refusal);
        match probe_of(Err(status)) {
            Probe::Refusing {
                reason, message, ..
            } => {
                assert_eq!(reason, RefusalReason::MasterKeyMismatch);
                assert_eq!(message, refusal.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_without_detail_is_unspecified_whatever_its_text() {
        let status = Status::failed_precondition("IdentityMismatch: an older keyserver");
        match probe_of(Err(status)) {
            Probe::Refusing {
                reason, message, ..
            } => {
                assert_eq!(reason, RefusalReason::Unspecified);
                assert_eq!(message, "IdentityMismatch: an older keyserver");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serving_and_unreachable() {
        assert!(matches!(
            probe_of(Ok(status_response("K"))),
            Probe::Serving(s) if s.keyserver_id == "K"
        ));
        assert!(matches!(
            probe_of(Err(Status::unavailable("starting"))),
            Probe::Unreachable(m) if m.contains("starting")
        ));
    }

    #[test]
    fn a_rejection_is_read_from_its_typed_detail_and_written_with_its_location() {
        let rejection = PolicyRejection {
            errors: vec![PolicyError {
                kind: PolicyErrorKind::UnknownArgument as i32,
                location: Some(PolicyLocation {
                    request_type: "decrypt".into(),
                    rule_set: Some(0),
                    rule: Some(1),
                    rule_name: "per-profile-throttle-rule".into(),
                    argument: "per_days".into(),
                    line: 7,
                    column: 0,
                }),
                message: "unknown argument (per-profile-throttle-rule takes per_hour)".into(),
            }],
        };
        let status = details::status_with(Code::InvalidArgument, "not this text", &rejection);
        let read = rejection_of(&status);
        assert_eq!(read, rejection);
        assert_eq!(
            rejection_text(&read),
            "decrypt: rule set 0, rule 1 (per-profile-throttle-rule), argument 'per_days' \
             (line 7): unknown argument (per-profile-throttle-rule takes per_hour)"
        );
        // Without a detail: the message as it is, kind unspecified.
        let old = rejection_of(&Status::invalid_argument("line 3: bad"));
        assert_eq!(old.errors[0].kind(), PolicyErrorKind::Unspecified);
        assert_eq!(rejection_text(&old), "line 3: bad");
    }
}
