//! JSON (proto3 JSON mapping) to protobuf bytes, with errors that name the
//! field and the message type.

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor};
use serde_path_to_error::{Segment, Track};

use super::GrpcMessageError;

/// Encodes `json` as a `desc` message. Unknown fields are errors, as in the
/// standard JSON mapping.
pub(super) fn encode(desc: &MessageDescriptor, json: &str) -> Result<Bytes, GrpcMessageError> {
    let message = desc.full_name().to_owned();
    // Well-known types (wrappers, Struct, Timestamp...) have JSON forms that
    // are not objects; every other message must be one.
    if desc.package_name() != "google.protobuf" {
        check_object(&message, json)?;
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let mut track = Track::new();
    let result = DynamicMessage::deserialize(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
    )
    .and_then(|msg| de.end().map(|()| msg));
    match result {
        Ok(msg) => Ok(Bytes::from(msg.encode_to_vec())),
        Err(e) if e.is_syntax() || e.is_eof() => Err(GrpcMessageError::JsonSyntax {
            message,
            reason: e.to_string(),
        }),
        Err(e) => Err(mismatch(desc, message, &track.path(), e)),
    }
}

fn check_object(message: &str, json: &str) -> Result<(), GrpcMessageError> {
    if json.trim_start().starts_with('{') {
        return Ok(());
    }
    let found = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Null) => "null",
        Ok(serde_json::Value::Bool(_)) => "a boolean",
        Ok(serde_json::Value::Number(_)) => "a number",
        Ok(serde_json::Value::String(_)) => "a string",
        Ok(serde_json::Value::Array(_)) => "an array",
        Ok(serde_json::Value::Object(_)) => return Ok(()),
        Err(e) => {
            return Err(GrpcMessageError::JsonSyntax {
                message: message.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    Err(GrpcMessageError::JsonNotObject {
        message: message.to_owned(),
        found,
    })
}

fn mismatch(
    desc: &MessageDescriptor,
    message: String,
    path: &serde_path_to_error::Path,
    err: serde_json::Error,
) -> GrpcMessageError {
    let reason = err.to_string();
    let field = (path.iter().len() > 0).then(|| path.to_string());
    // For an unknown field, list the fields the message at that point has.
    let fields_hint = if reason.starts_with("unrecognized field name") {
        message_at(desc, path).map(|m| {
            let names: Vec<String> = m.fields().map(|f| f.json_name().to_owned()).collect();
            format!("{} has: {}", m.full_name(), names.join(", "))
        })
    } else {
        None
    };
    GrpcMessageError::JsonMismatch {
        message,
        field,
        reason,
        fields_hint,
    }
}

/// The message type the JSON `path` leads to inside `root`, if it leads to
/// one.
fn message_at(
    root: &MessageDescriptor,
    path: &serde_path_to_error::Path,
) -> Option<MessageDescriptor> {
    let mut current = root.clone();
    for segment in path.iter() {
        match segment {
            Segment::Seq { .. } => {}
            // Inside a map field the key is the map's, not a field name.
            Segment::Map { .. } if current.is_map_entry() => {
                current = match current.map_entry_value_field().kind() {
                    Kind::Message(m) => m,
                    _ => return None,
                };
            }
            Segment::Map { key } => {
                let field = current
                    .get_field_by_json_name(key)
                    .or_else(|| current.get_field_by_name(key))?;
                current = match field.kind() {
                    Kind::Message(m) => m,
                    _ => return None,
                };
            }
            Segment::Enum { .. } | Segment::Unknown => return None,
        }
    }
    Some(current)
}
