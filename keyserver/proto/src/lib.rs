//! The kss gRPC API, generated from `proto/kss/v1/*.proto`.
#![allow(clippy::all, clippy::unwrap_used)]

/// Version 1 of the API (package `kss.v1`).
pub mod v1 {
    tonic::include_proto!("kss.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kss_descriptor");
}

/// `google.rpc.Status`: the standard shape of a gRPC error's details trailer.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Typed error details: a kss message (`kss.v1.Refusal`, `kss.v1.PolicyRejection`)
/// carried by a gRPC status in gRPC's standard rich error model (a `google.rpc.Status`
/// in `grpc-status-details-bin`, the detail packed in a `google.protobuf.Any`), so that
/// clients read a typed value instead of parsing the message.
pub mod details {
    use prost::{Message, Name};
    use tonic::{Code, Status};

    use crate::google::rpc;

    /// A status with `code` and `message` that carries `detail`.
    pub fn status_with<M: Name>(code: Code, message: impl Into<String>, detail: &M) -> Status {
        let message = message.into();
        // Encoding into a growing buffer cannot fail; if it did, the status still has its
        // code and message.
        let Ok(any) = prost_types::Any::from_msg(detail) else {
            return Status::new(code, message);
        };
        let body = rpc::Status {
            code: code as i32,
            message: message.clone(),
            details: vec![any],
        };
        Status::with_details(code, message, body.encode_to_vec().into())
    }

    /// The first detail of type `M` that `status` carries; `None` if it carries none (an
    /// older server, another error) or it does not decode.
    pub fn find<M: Name + Default>(status: &Status) -> Option<M> {
        let body = rpc::Status::decode(status.details()).ok()?;
        let type_url = M::type_url();
        body.details
            .iter()
            .find(|any| any.type_url == type_url)
            .and_then(|any| any.to_msg::<M>().ok())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::v1::{Refusal, RefusalReason};

        #[test]
        fn a_detail_travels_with_its_status() {
            let refusal = Refusal {
                reason: RefusalReason::IdentityMissing as i32,
                message: "no identity".into(),
                kss_version: "0.1.0".into(),
            };
            let status = status_with(Code::FailedPrecondition, "no identity", &refusal);
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!(status.message(), "no identity");
            assert_eq!(find::<Refusal>(&status), Some(refusal));
            // The standard envelope, with the standard type URL.
            let body = rpc::Status::decode(status.details()).expect("google.rpc.Status");
            assert_eq!(body.code, Code::FailedPrecondition as i32);
            assert_eq!(
                body.details[0].type_url,
                "type.googleapis.com/kss.v1.Refusal"
            );
        }

        #[test]
        fn no_detail_or_another_type_is_none() {
            let plain = Status::failed_precondition("IdentityMissing: old server");
            assert_eq!(find::<Refusal>(&plain), None);
            let other = status_with(
                Code::InvalidArgument,
                "bad",
                &crate::v1::PolicyRejection { errors: vec![] },
            );
            assert_eq!(find::<Refusal>(&other), None);
            let garbage = Status::with_details(Code::Internal, "x", vec![0xff, 0xff].into());
            assert_eq!(find::<Refusal>(&garbage), None);
        }
    }
}
