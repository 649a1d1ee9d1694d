//! Signature schemes: protobuf ↔ [`SignatureScheme`], fields named under
//! the request's own path.

use keyplane_proto::admin::v1 as pb;
use pb::signature_scheme::Scheme;

use crate::error::{Error, Result};
use crate::service::records::{Encoding, HmacHeader, SignatureScheme, SignedContent};

/// The scheme of a request at `field` (unset: Standard Webhooks).
pub fn scheme_from_proto(field: &str, scheme: Option<pb::SignatureScheme>) -> Result<SignatureScheme> {
    let Some(Scheme::HmacHeader(h)) = scheme.and_then(|s| s.scheme) else {
        return Ok(SignatureScheme::StandardWebhooks);
    };
    let field = format!("{field}.hmac_header");
    let encoding = match pb::SignatureEncoding::try_from(h.encoding) {
        Ok(pb::SignatureEncoding::Unspecified | pb::SignatureEncoding::Hex) => Encoding::Hex,
        Ok(pb::SignatureEncoding::Base64) => Encoding::Base64,
        Err(_) => return Err(Error::invalid(format!("{field}.encoding"), "is not a SignatureEncoding")),
    };
    let signed = match pb::SignedContent::try_from(h.signed_content) {
        Ok(pb::SignedContent::Unspecified | pb::SignedContent::Body) => SignedContent::Body,
        Ok(pb::SignedContent::TimestampDotBody) => SignedContent::TimestampDotBody,
        Err(_) => return Err(Error::invalid(format!("{field}.signed_content"), "is not a SignedContent")),
    };
    let header = HmacHeader::new(&field, &h.header, encoding, signed, &h.timestamp_header, &h.prefix)?;
    Ok(SignatureScheme::HmacHeader(header))
}

/// A stored scheme as protobuf.
pub fn scheme_to_proto(scheme: &SignatureScheme) -> pb::SignatureScheme {
    let scheme = match scheme {
        SignatureScheme::StandardWebhooks => Scheme::StandardWebhooks(pb::StandardWebhooksScheme {}),
        SignatureScheme::HmacHeader(h) => Scheme::HmacHeader(pb::HmacHeaderScheme {
            header: h.header.clone(),
            encoding: match h.encoding {
                Encoding::Hex => pb::SignatureEncoding::Hex,
                Encoding::Base64 => pb::SignatureEncoding::Base64,
            }
            .into(),
            signed_content: match h.signed {
                SignedContent::Body => pb::SignedContent::Body,
                SignedContent::TimestampDotBody => pb::SignedContent::TimestampDotBody,
            }
            .into(),
            timestamp_header: h.timestamp_header.clone().unwrap_or_default(),
            prefix: h.prefix.clone(),
        }),
    };
    pb::SignatureScheme { scheme: Some(scheme) }
}
