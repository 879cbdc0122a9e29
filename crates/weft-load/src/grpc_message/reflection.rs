//! Descriptors from the server's gRPC reflection service
//! (`grpc.reflection.v1`, falling back to `v1alpha`), over plaintext h2c.

use std::time::Duration;

use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use super::{GrpcMessageError, files};
use crate::spec::Target;

// v1 and v1alpha are the same proto under two package names, so the v1
// message types serve both; only the path differs.
const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Bounds the rounds of "send me this imported file" with a server that
/// keeps answering with files that import yet more files.
const MAX_ROUNDS: usize = 32;

/// The file defining `service` and everything it imports, from the
/// reflection service of `target`, within `timeout`.
pub(super) async fn fetch_pool(
    target: &Target,
    service: &str,
    timeout: Duration,
) -> Result<DescriptorPool, GrpcMessageError> {
    let name = target.to_string();
    tokio::time::timeout(timeout, fetch(target, service, timeout))
        .await
        .map_err(|_| GrpcMessageError::ReflectionTimeout {
            target: name,
            timeout,
        })?
}

async fn fetch(
    target: &Target,
    service: &str,
    timeout: Duration,
) -> Result<DescriptorPool, GrpcMessageError> {
    let mut session = Session::connect(target, timeout).await?;
    let symbol = MessageRequest::FileContainingSymbol(service.to_owned());
    let first = match session.ask(vec![symbol.clone()]).await {
        Err(status) if status.code() == Code::Unimplemented => {
            session.path = V1ALPHA;
            match session.ask(vec![symbol]).await {
                Err(status) if status.code() == Code::Unimplemented => {
                    return Err(GrpcMessageError::NoReflection {
                        target: session.target,
                    });
                }
                other => other,
            }
        }
        other => other,
    }
    .map_err(|status| session.failed(&status))?;

    let mut files = match first.into_iter().next() {
        Some(MessageResponse::FileDescriptorResponse(r)) => {
            session.decode(r.file_descriptor_proto)?
        }
        Some(MessageResponse::ErrorResponse(e)) if e.error_code == Code::NotFound as i32 => {
            return Err(session.unknown_service(service).await);
        }
        other => return Err(session.unexpected(&other)),
    };
    session.add_imports(&mut files).await?;
    files::pool_from_files(files).map_err(|reason| GrpcMessageError::InvalidDescriptors {
        origin: format!("the reflection service at {}", session.target),
        reason,
    })
}

/// One server's reflection service, at the version it answers to.
struct Session {
    grpc: Grpc<Channel>,
    path: &'static str,
    target: String,
}

impl Session {
    async fn connect(target: &Target, timeout: Duration) -> Result<Self, GrpcMessageError> {
        let name = target.to_string();
        let unreachable = |reason: String| GrpcMessageError::Unreachable {
            target: name.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
            .map_err(|e| unreachable(error_chain(&e)))?
            .connect_timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(Session {
            grpc: Grpc::new(channel),
            path: V1,
            target: name,
        })
    }

    /// Sends `requests` on one stream and returns one answer per request,
    /// in order.
    async fn ask(&mut self, requests: Vec<MessageRequest>) -> Result<Vec<MessageResponse>, Status> {
        let n = requests.len();
        let stream = tokio_stream::iter(requests.into_iter().map(|r| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r),
        }));
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(error_chain(&e)))?;
        let codec =
            tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
        let mut responses = self
            .grpc
            .streaming(
                tonic::Request::new(stream),
                PathAndQuery::from_static(self.path),
                codec,
            )
            .await?
            .into_inner();
        let mut answers = Vec::with_capacity(n);
        while answers.len() < n {
            match responses.message().await? {
                Some(ServerReflectionResponse {
                    message_response: Some(answer),
                    ..
                }) => answers.push(answer),
                Some(_) => {
                    return Err(Status::internal(
                        "a reflection response with no answer in it",
                    ));
                }
                None => {
                    return Err(Status::internal(format!(
                        "the reflection stream ended after {} of {n} answers",
                        answers.len()
                    )));
                }
            }
        }
        Ok(answers)
    }

    /// Fetches the files `files` import until none is missing. Well-known
    /// `google/protobuf/*.proto` files come from protox's copies.
    async fn add_imports(
        &mut self,
        files: &mut Vec<FileDescriptorProto>,
    ) -> Result<(), GrpcMessageError> {
        for _ in 0..MAX_ROUNDS {
            let missing = files::missing_imports(files);
            if missing.is_empty() {
                return Ok(());
            }
            let mut ask = Vec::new();
            for name in missing {
                match files::well_known(&name) {
                    Some(file) => files.push(file),
                    None => ask.push(name),
                }
            }
            if ask.is_empty() {
                continue;
            }
            let requests = ask
                .iter()
                .cloned()
                .map(MessageRequest::FileByFilename)
                .collect();
            let answers = self.ask(requests).await.map_err(|s| self.failed(&s))?;
            for (name, answer) in ask.iter().zip(answers) {
                let MessageResponse::FileDescriptorResponse(r) = answer else {
                    return Err(GrpcMessageError::Reflection {
                        target: self.target.clone(),
                        reason: format!(
                            "the server does not give the imported file {name}: {}",
                            describe(&Some(answer))
                        ),
                    });
                };
                for file in self.decode(r.file_descriptor_proto)? {
                    if !files.iter().any(|f| f.name() == file.name()) {
                        files.push(file);
                    }
                }
            }
        }
        Err(GrpcMessageError::Reflection {
            target: self.target.clone(),
            reason: format!("imports still missing after {MAX_ROUNDS} rounds of requests"),
        })
    }

    fn decode(&self, encoded: Vec<Vec<u8>>) -> Result<Vec<FileDescriptorProto>, GrpcMessageError> {
        encoded
            .iter()
            .map(|bytes| {
                FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
                    GrpcMessageError::Reflection {
                        target: self.target.clone(),
                        reason: format!("a file descriptor does not decode: {e}"),
                    }
                })
            })
            .collect()
    }

    /// The service is unknown: say which ones the server does offer.
    async fn unknown_service(&mut self, service: &str) -> GrpcMessageError {
        let available = match self
            .ask(vec![MessageRequest::ListServices(String::new())])
            .await
        {
            Ok(answers) => match answers.into_iter().next() {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                    names.sort();
                    names
                }
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        super::unknown_service(
            service,
            format!("the server at {} offers", self.target),
            available,
        )
    }

    fn failed(&self, status: &Status) -> GrpcMessageError {
        let reason = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Code::Unavailable => GrpcMessageError::Unreachable {
                target: self.target.clone(),
                reason,
            },
            _ => GrpcMessageError::Reflection {
                target: self.target.clone(),
                reason,
            },
        }
    }

    fn unexpected(&self, answer: &Option<MessageResponse>) -> GrpcMessageError {
        GrpcMessageError::Reflection {
            target: self.target.clone(),
            reason: describe(answer),
        }
    }
}

fn describe(answer: &Option<MessageResponse>) -> String {
    match answer {
        Some(MessageResponse::ErrorResponse(e)) => {
            format!("{:?}: {}", Code::from(e.error_code), e.error_message)
        }
        Some(_) => "an answer of the wrong kind".to_owned(),
        None => "no answer".to_owned(),
    }
}

/// An error with its causes, `outer: inner: root`; tonic's transport
/// errors say little at the top level.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
