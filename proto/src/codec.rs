//! The protobuf codec of every Keyplane service: prost, plus two rules for
//! requests a server receives.
//!
//! - A request that does not decode (truncated, or nested past prost's
//!   recursion limit, e.g. deeply nested `metadata`) is the caller's
//!   mistake: INVALID_ARGUMENT, not tonic's default INTERNAL.
//! - No string anywhere in a request may contain NUL (`\u0000`): Postgres
//!   cannot store it in `text` or `jsonb`, so SQLite and Postgres would
//!   otherwise disagree. The request is walked by reflection, so every
//!   field is covered, including `Struct` keys and values, and the error
//!   names the field (`metadata.tier`, `event_types[1]`).
//!
//! Responses decode exactly as with `tonic_prost::ProstCodec`.

use std::marker::PhantomData;
use std::sync::LazyLock;

use prost::bytes::Buf;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Every Keyplane message type, for walking requests.
static DESCRIPTORS: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).ok());

/// Codec for message types `T` (sent) and `U` (received).
#[derive(Debug)]
pub struct KeyplaneCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KeyplaneCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KeyplaneCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = KeyplaneDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeyplaneDecoder(PhantomData)
    }
}

/// Decodes `U`, applying the request rules when `U` is a request.
#[derive(Debug)]
pub struct KeyplaneDecoder<U>(PhantomData<U>);

impl<U: Message + Name + Default> Decoder for KeyplaneDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Services name their inputs `…Request` (buf lint enforces it); only
        // a server decodes those.
        let is_request = U::NAME.ends_with("Request");
        let bytes = buf.copy_to_bytes(buf.remaining());
        let message = U::decode(bytes.clone()).map_err(|error| {
            let message = format!("the request is not a valid {}: {error}", U::full_name());
            if is_request { Status::invalid_argument(message) } else { Status::internal(message) }
        })?;
        if is_request && let Some(field) = field_with_nul(&U::full_name(), &bytes) {
            let violation = FieldViolation::new(field.clone(), "must not contain NUL (\\u0000) characters");
            return Err(Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("invalid argument: {field}: must not contain NUL (\\u0000) characters"),
                ErrorDetails::with_bad_request(vec![violation]),
            ));
        }
        Ok(Some(message))
    }
}

/// The path of the first string field holding a NUL, if any.
pub fn field_with_nul(message_name: &str, bytes: &[u8]) -> Option<String> {
    // Cheap test first: no zero byte at all means no NUL in any string.
    if !bytes.contains(&0) {
        return None;
    }
    let descriptor = DESCRIPTORS.as_ref()?.get_message_by_name(message_name)?;
    let message = DynamicMessage::decode(descriptor, bytes).ok()?;
    nul_in_message(&message, "")
}

fn nul_in_message(message: &DynamicMessage, path: &str) -> Option<String> {
    // Inside google.protobuf.Struct / Value / ListValue the field names
    // (`fields`, `string_value`, …) say nothing to the caller: skip them.
    let transparent = message.descriptor().full_name().starts_with("google.protobuf.");
    message.fields().find_map(|(field, value)| {
        let path = if transparent {
            path.to_owned()
        } else if path.is_empty() {
            field.name().to_owned()
        } else {
            format!("{path}.{}", field.name())
        };
        nul_in_value(value, &path)
    })
}

fn nul_in_value(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(|| path.to_owned()),
        Value::Message(message) => nul_in_message(message, path),
        Value::List(items) => {
            items.iter().enumerate().find_map(|(i, item)| nul_in_value(item, &format!("{path}[{i}]")))
        }
        Value::Map(entries) => entries.iter().find_map(|(key, item)| match key {
            MapKey::String(key) if key.contains('\0') => Some(path.to_owned()),
            MapKey::String(key) => nul_in_value(item, &format!("{path}.{key}")),
            other => nul_in_value(item, &format!("{path}[{other:?}]")),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::v1 as pb;

    fn nul_field_of(request: &impl Message, name: &str) -> Option<String> {
        field_with_nul(name, &request.encode_to_vec())
    }

    #[test]
    fn finds_nul_in_any_string_and_names_the_field() {
        let clean = pb::ListApiKeysRequest { org_id: "acme".into(), name_prefix: "ab".into(), ..Default::default() };
        assert_eq!(nul_field_of(&clean, "keyplane.admin.v1.ListApiKeysRequest"), None);
        let dirty = pb::ListApiKeysRequest { name_prefix: "a\0b".into(), ..clean };
        assert_eq!(nul_field_of(&dirty, "keyplane.admin.v1.ListApiKeysRequest").as_deref(), Some("name_prefix"));

        let metadata = |key: &str, value: &str| prost_types::Struct {
            fields: [(
                key.to_owned(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(value.to_owned())) },
            )]
            .into(),
        };
        let name = "keyplane.admin.v1.CreateApiKeyRequest";
        let request = |m| pb::CreateApiKeyRequest { name: "n".into(), metadata: Some(m), ..Default::default() };
        assert_eq!(nul_field_of(&request(metadata("tier", "x\0")), name).as_deref(), Some("metadata.tier"));
        assert_eq!(nul_field_of(&request(metadata("ti\0er", "x")), name).as_deref(), Some("metadata"));
        assert_eq!(nul_field_of(&request(metadata("tier", "x")), name), None);
    }
}
