//! The token format (ARCHITECTURE.md, "Tokens"), shared by the control plane (which issues
//! and verifies tokens) and the sidecar (which rejects garbage without a lookup):
//! `<prefix>_<live|test>_` + 22 base62 key id + 43 base62 secret (256 bits)
//! + 6 base62 CRC32 of everything before it. Fixed length, parsed by position.

use std::fmt;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters of a key id (a u128).
pub const KEY_ID_LEN: usize = 22;
/// Base62 characters of a 256-bit secret.
pub const SECRET_LEN: usize = 43;
/// Base62 characters of the CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Prefix of the public key id (`key_…`); not part of the token.
pub const KEY_ID_PREFIX: &str = "key_";
/// Longest token of another system's that is looked up (imported keys).
pub const MAX_FOREIGN_TOKEN_BYTES: usize = 512;

/// Whether a token not in Keyplane's format could be another system's:
/// visible ASCII, at most [`MAX_FOREIGN_TOKEN_BYTES`]. Anything else is
/// refused as malformed without a lookup, by sidecars and the control plane.
pub fn could_be_foreign(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_FOREIGN_TOKEN_BYTES && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Which traffic a key is for. With the `sea-orm` feature it is also a
/// column type, stored as its name (`live`, `test`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "sea-orm", derive(sea_orm::DeriveValueType), sea_orm(value_type = "String"))]
pub enum Environment {
    /// Production traffic.
    Live,
    /// Test traffic.
    Test,
}

impl Environment {
    /// The name stored in the database and used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Environment {
    type Err = UnknownEnvironment;

    fn from_str(name: &str) -> Result<Self, UnknownEnvironment> {
        Self::parse(name).ok_or_else(|| UnknownEnvironment(name.to_owned()))
    }
}

/// A name that is not an [`Environment`].
#[derive(Debug)]
pub struct UnknownEnvironment(String);

impl fmt::Display for UnknownEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an environment: use `live` or `test`", self.0)
    }
}

impl std::error::Error for UnknownEnvironment {}

/// Builds and parses tokens for one configured prefix (default `kp`).
#[derive(Clone, Debug)]
pub struct TokenFormat {
    /// `<prefix>_live_` and `<prefix>_test_`, built once: every check parses a token.
    heads: [String; 2],
}

/// A token that passed the format and checksum test. Borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// Environment named by the token prefix.
    pub environment: Environment,
    /// The 22 base62 characters of the key id (without `key_`).
    pub key_id_body: &'a str,
    /// The secret part, hashed with argon2id.
    pub secret: &'a str,
}

impl ParsedToken<'_> {
    /// The public key id (`key_…`).
    pub fn key_id(&self) -> String {
        format!("{KEY_ID_PREFIX}{}", self.key_id_body)
    }
}

/// A freshly generated token; `token` is shown once and never stored.
pub struct NewToken {
    /// Full plaintext token.
    pub token: String,
    /// Public key id (`key_…`).
    pub key_id: String,
    /// Display prefix: the token up to and including the key id.
    pub start: String,
}

impl NewToken {
    /// The secret part of the token (what argon2id hashes).
    pub fn secret(&self) -> &str {
        &self.token[self.start.len()..self.start.len() + SECRET_LEN]
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl TokenFormat {
    /// A format with this prefix (letters and digits only, checked by config).
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let head = |environment: Environment| format!("{prefix}_{}_", environment.as_str());
        Self { heads: [head(Environment::Live), head(Environment::Test)] }
    }

    fn head(&self, environment: Environment) -> &str {
        match environment {
            Environment::Live => &self.heads[0],
            Environment::Test => &self.heads[1],
        }
    }

    /// Generates a new key id and secret for `environment`.
    pub fn generate(&self, environment: Environment) -> NewToken {
        let id_body = new_id_body();
        let secret = encode_fixed(&random_bytes::<32>(), SECRET_LEN);
        let mut token = self.head(environment).to_owned();
        token.push_str(&id_body);
        let start = token.clone();
        token.push_str(&secret);
        let checksum = checksum(&token);
        token.extend(checksum.iter().map(|&digit| char::from(digit)));
        NewToken { token, key_id: format!("{KEY_ID_PREFIX}{id_body}"), start }
    }

    /// Checks the prefix, length, alphabet and checksum. Costs no lookup.
    pub fn parse<'a>(&self, token: &'a str) -> Option<ParsedToken<'a>> {
        let environment =
            [Environment::Live, Environment::Test].into_iter().find(|env| token.starts_with(self.head(*env)))?;
        let head_len = self.head(environment).len();
        let body = &token[head_len..];
        if body.len() != KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let (signed, checksum) = token.split_at(token.len() - CHECKSUM_LEN);
        if checksum.as_bytes() != self::checksum(signed) {
            return None;
        }
        Some(ParsedToken {
            environment,
            key_id_body: &body[..KEY_ID_LEN],
            secret: &body[KEY_ID_LEN..KEY_ID_LEN + SECRET_LEN],
        })
    }
}

/// The checksum of a token's `signed` part: [`encode_fixed`] of its CRC-32,
/// without allocating.
fn checksum(signed: &str) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(signed.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// `N` bytes from the operating system's CSPRNG (via `rand`'s thread RNG).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// 22 base62 characters: 48-bit Unix milliseconds then 80 random bits.
pub fn new_id_body() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
        & ((1 << 48) - 1);
    let random = u128::from_be_bytes(random_bytes::<16>()) >> 48;
    encode_fixed(&((millis << 80) | random).to_be_bytes(), KEY_ID_LEN)
}

/// Base62 of a big-endian number, left-padded with `0` to `width` characters.
/// Fixed width keeps string order equal to numeric order.
pub fn encode_fixed(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    digits.resize(width.max(digits.len()), b'0');
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let format = TokenFormat::new("kp");
        let new = format.generate(Environment::Test);
        assert!(new.token.starts_with("kp_test_"));
        assert_eq!(new.token.len(), 8 + KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN);
        let parsed = format.parse(&new.token).expect("valid token");
        assert_eq!(parsed.environment, Environment::Test);
        assert_eq!(parsed.key_id(), new.key_id);
        assert!(new.start.ends_with(parsed.key_id_body));
        assert_eq!(new.secret(), parsed.secret);
    }

    #[test]
    fn checksums_are_the_base62_of_the_crc() {
        for signed in ["", "kp_live_", "kp_test_0123456789abcdefghijklmnopqrstuvwxyzABCDEF"] {
            let crc = crc32fast::hash(signed.as_bytes());
            assert_eq!(checksum(signed).to_vec(), encode_fixed(&crc.to_be_bytes(), CHECKSUM_LEN).into_bytes());
        }
        // The largest CRC still fits the width.
        assert_eq!(encode_fixed(&u32::MAX.to_be_bytes(), CHECKSUM_LEN).len(), CHECKSUM_LEN);
    }

    #[test]
    fn any_changed_character_fails_the_checksum() {
        let format = TokenFormat::new("kp");
        let token = format.generate(Environment::Live).token;
        for i in 8..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(format.parse(&changed).is_none(), "position {i}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let format = TokenFormat::new("kp");
        for garbage in ["", "kp_live_", "kp_prod_abc", "Bearer x", &"a".repeat(80)] {
            assert!(format.parse(garbage).is_none());
        }
        let token = format.generate(Environment::Live).token;
        assert!(TokenFormat::new("acme").parse(&token).is_none());
        assert!(format.parse(&format!("{token}x")).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in ".*", prefix in "[a-z0-9]{1,16}") {
            let _ = TokenFormat::new(prefix).parse(&text);
        }

        #[test]
        fn generated_tokens_round_trip(prefix in "[a-z0-9]{1,16}", live in proptest::bool::ANY) {
            let format = TokenFormat::new(prefix);
            let environment = if live { Environment::Live } else { Environment::Test };
            let new = format.generate(environment);
            let parsed = format.parse(&new.token).expect("a generated token parses");
            proptest::prop_assert_eq!(parsed.key_id(), new.key_id);
            proptest::prop_assert_eq!(parsed.environment, environment);
        }

        #[test]
        fn any_other_character_anywhere_is_refused(position in 0usize..79, replacement in "[0-9A-Za-z_]") {
            let format = TokenFormat::new("kp");
            let token = format.generate(Environment::Live).token;
            let position = position % token.len();
            proptest::prop_assume!(token[position..=position] != replacement);
            let changed = format!("{}{replacement}{}", &token[..position], &token[position + 1..]);
            proptest::prop_assert!(format.parse(&changed).is_none());
        }

        #[test]
        fn base62_keeps_numeric_order(a in proptest::num::u64::ANY, b in proptest::num::u64::ANY) {
            let (ea, eb) = (encode_fixed(&a.to_be_bytes(), 11), encode_fixed(&b.to_be_bytes(), 11));
            proptest::prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
        }
    }

    #[test]
    fn base62_is_fixed_width_and_ordered() {
        assert_eq!(encode_fixed(&[0], 3), "000");
        assert_eq!(encode_fixed(&[61], 2), "0z");
        assert_eq!(encode_fixed(&[0, 62], 2), "10");
        assert_eq!(encode_fixed(&[0xff; 32], SECRET_LEN).len(), SECRET_LEN);
        assert_eq!(encode_fixed(&u128::MAX.to_be_bytes(), KEY_ID_LEN).len(), KEY_ID_LEN);
        let a = encode_fixed(&1000u32.to_be_bytes(), 6);
        let b = encode_fixed(&1001u32.to_be_bytes(), 6);
        assert!(a < b);
    }
}
