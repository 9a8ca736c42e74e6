//! Authentication: who is calling. Two modes, chosen by flags:
//!
//! - **Local** (default): a random access token is made at start (or given with `--token`) and printed in the
//!   URL. Whoever presents it may exchange it for a session cookie, a token the server signs itself.
//! - **JWT**: tokens issued elsewhere, verified with an HS256 secret, an RS256/ES256 public key (PEM) or a JWKS
//!   file; `exp`/`nbf` with a small leeway, issuer and audience when configured, subject and groups from
//!   configurable claims. The session cookie then holds the JWT itself.
//!
//! Credentials are read from `Authorization: Bearer`, the `porthole_session` cookie, or (Socket.IO) the
//! handshake's `auth.token`. Failed attempts are counted per client address ([`FailureLimiter`]).

pub mod limiter;
pub mod policy;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use app::protocol::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::ServiceError;

pub use limiter::FailureLimiter;

/// The cookie that carries a browser's session.
pub const SESSION_COOKIE: &str = "porthole_session";
/// Subject of whoever holds the local access token.
pub const LOCAL_SUBJECT: &str = "local";
/// How long a local session cookie lasts.
pub const LOCAL_SESSION_SECS: u64 = 7 * 24 * 3600;
/// Longest credential accepted, in bytes (a JWT with many groups fits easily).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Logged-out sessions remembered until they expire, at most this many (the oldest are forgotten first).
pub const MAX_REVOKED_SESSIONS: usize = 10_000;
/// Issuer of the local mode's session tokens.
const LOCAL_ISSUER: &str = "porthole-local";
/// Length of a generated access token (alphanumeric: about 5.95 bits each, so 256 bits in all).
const GENERATED_TOKEN_LEN: usize = 43;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub groups: Vec<String>,
    /// Unix seconds after which the credential is no longer valid.
    pub expires_at: Option<u64>,
    /// The token's `jti`, if it has one (revocation and logout use it).
    pub token_id: Option<String>,
}

impl Principal {
    /// Whether the credential has expired at `now` (Unix seconds), leeway included.
    pub fn expired_at(&self, now: u64, leeway: u64) -> bool {
        self.expires_at.is_some_and(|exp| now > exp.saturating_add(leeway))
    }
}

/// Why a credential was refused. The message never repeats the credential.
pub fn unauthenticated(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorCode::Unauthenticated, message)
}

fn expired() -> ServiceError {
    ServiceError::new(ErrorCode::TokenExpired, "the token has expired; sign in again")
}

/// JWT verification settings (JWT mode).
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// File holding the HS256 shared secret (trailing newline ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`) with RSA or EC P-256 keys; `kid` selects the key when tokens carry one.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Claim holding the subject (dotted paths reach into objects, e.g. `user.name`).
    pub subject_claim: String,
    /// Claim holding the groups: an array of strings, or one string.
    pub groups_claim: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl JwtConfig {
    pub fn configured(&self) -> bool {
        self.hs256_secret_file.is_some() || self.public_key_file.is_some() || self.jwks_file.is_some()
    }
}

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

enum Mode {
    Local { token: String, session_encode: EncodingKey, session_decode: DecodingKey },
    Jwt { keys: Vec<VerifyKey>, config: JwtConfig },
}

/// Verifies credentials and issues session cookies.
pub struct Authenticator {
    mode: Mode,
    /// Session token ids ended by logout, oldest first, bounded by [`MAX_REVOKED_SESSIONS`].
    logged_out: Mutex<(VecDeque<String>, HashSet<String>)>,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Local { .. } => "local",
            Mode::Jwt { .. } => "jwt",
        };
        f.debug_struct("Authenticator").field("mode", &mode).finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    iss: String,
    exp: u64,
    iat: u64,
    jti: String,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh random access token.
pub fn generate_token() -> String {
    use rand::Rng;
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(GENERATED_TOKEN_LEN).map(char::from).collect()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl Authenticator {
    fn with_mode(mode: Mode, leeway: u64) -> Authenticator {
        Authenticator { mode, logged_out: Mutex::new((VecDeque::new(), HashSet::new())), leeway }
    }

    /// Local mode with access token `token`.
    pub fn local(token: String) -> Authenticator {
        // Sessions are signed with a key derived from the token: restarting with the same `--token` keeps
        // browsers signed in, a new token signs everyone out.
        let secret = format!("porthole-session\0{token}");
        Authenticator::with_mode(
            Mode::Local {
                session_encode: EncodingKey::from_secret(secret.as_bytes()),
                session_decode: DecodingKey::from_secret(secret.as_bytes()),
                token,
            },
            0,
        )
    }

    /// JWT mode; reads the key files now, so a bad file stops the server at start with a clear message.
    pub fn jwt(config: JwtConfig) -> Result<Authenticator, String> {
        let mut keys = Vec::new();
        if let Some(path) = &config.hs256_secret_file {
            let mut secret = read(path, "JWT secret file")?;
            while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(format!("the JWT secret in {} must be at least 32 bytes", path.display()));
            }
            keys.push(VerifyKey { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(&secret) });
        }
        if let Some(path) = &config.public_key_file {
            let pem = read(path, "JWT public key file")?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                VerifyKey { kid: None, alg: Algorithm::RS256, key: k }
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                VerifyKey { kid: None, alg: Algorithm::ES256, key: k }
            } else {
                return Err(format!("{} holds no RSA or EC public key in PEM form", path.display()));
            };
            keys.push(key);
        }
        if let Some(path) = &config.jwks_file {
            let raw = read(path, "JWKS file")?;
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_slice(&raw).map_err(|e| format!("{} is not a JWKS document: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
                        if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("{}: key {:?} is unusable: {e}", path.display(), jwk.common.key_id))?;
                keys.push(VerifyKey { kid: jwk.common.key_id.clone(), alg, key });
            }
            if keys.is_empty() {
                return Err(format!("{} has no RSA or P-256 keys", path.display()));
            }
        }
        if keys.is_empty() {
            return Err("JWT mode needs a secret file, a public key file or a JWKS file".into());
        }
        let leeway = config.leeway_secs;
        Ok(Authenticator::with_mode(Mode::Jwt { keys, config }, leeway))
    }

    pub fn is_local(&self) -> bool {
        matches!(self.mode, Mode::Local { .. })
    }

    /// The local access token (local mode only).
    pub fn local_token(&self) -> Option<&str> {
        match &self.mode {
            Mode::Local { token, .. } => Some(token),
            Mode::Jwt { .. } => None,
        }
    }

    /// Seconds of tolerated clock skew.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Checks a credential: the access token or a session token (local mode), a JWT (JWT mode).
    pub fn verify(&self, token: &str) -> Result<Principal, ServiceError> {
        if token.is_empty() {
            return Err(unauthenticated("no token was given"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthenticated(format!("the token is longer than {MAX_TOKEN_LEN} bytes")));
        }
        let principal = match &self.mode {
            Mode::Local { token: expected, session_decode, .. } => {
                if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
                    return Ok(Principal {
                        subject: LOCAL_SUBJECT.into(),
                        groups: Vec::new(),
                        expires_at: None,
                        token_id: None,
                    });
                }
                if token.matches('.').count() != 2 {
                    return Err(unauthenticated("wrong access token"));
                }
                let mut v = Validation::new(Algorithm::HS256);
                v.set_issuer(&[LOCAL_ISSUER]);
                v.validate_aud = false;
                v.leeway = 0;
                let data = jsonwebtoken::decode::<SessionClaims>(token, session_decode, &v).map_err(jwt_error)?;
                Principal {
                    subject: data.claims.sub,
                    groups: Vec::new(),
                    expires_at: Some(data.claims.exp),
                    token_id: Some(data.claims.jti),
                }
            }
            Mode::Jwt { keys, config } => verify_jwt(token, keys, config)?,
        };
        if self.signed_out(&principal) {
            return Err(ServiceError::new(ErrorCode::TokenRevoked, "this session was signed out"));
        }
        Ok(principal)
    }

    /// Exchanges a verified credential for a session cookie value and its lifetime in seconds.
    pub fn session_for(&self, principal: &Principal, presented: &str) -> Result<(String, u64), ServiceError> {
        self.session_with_id(principal, presented).map(|(value, age, _)| (value, age))
    }

    /// [`Authenticator::session_for`], with the session's token id (what a logout revokes), if it has one.
    pub fn session_with_id(
        &self,
        principal: &Principal,
        presented: &str,
    ) -> Result<(String, u64, Option<String>), ServiceError> {
        let now = now_secs();
        match &self.mode {
            Mode::Local { session_encode, .. } => {
                let claims = SessionClaims {
                    sub: principal.subject.clone(),
                    iss: LOCAL_ISSUER.into(),
                    exp: now + LOCAL_SESSION_SECS,
                    iat: now,
                    jti: uuid::Uuid::new_v4().simple().to_string(),
                };
                let value = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, session_encode)
                    .map_err(|e| ServiceError::new(ErrorCode::Internal, format!("could not sign a session: {e}")))?;
                Ok((value, LOCAL_SESSION_SECS, Some(claims.jti)))
            }
            // The JWT is the session: it lives as long as the token does.
            Mode::Jwt { .. } => {
                let left = principal.expires_at.map_or(3600, |exp| exp.saturating_sub(now).max(1));
                Ok((presented.to_string(), left, principal.token_id.clone()))
            }
        }
    }

    /// Whether `principal`'s session was signed out.
    pub fn signed_out(&self, principal: &Principal) -> bool {
        principal
            .token_id
            .as_ref()
            .is_some_and(|jti| self.logged_out.lock().unwrap_or_else(|e| e.into_inner()).1.contains(jti))
    }

    /// Ends a session (logout): its token id is refused from now on.
    pub fn sign_out(&self, principal: &Principal) {
        if let Some(jti) = &principal.token_id {
            self.sign_out_id(jti);
        }
    }

    /// Refuses the session with token id `jti` from now on; false if it was already.
    pub fn sign_out_id(&self, jti: &str) -> bool {
        let mut guard = self.logged_out.lock().unwrap_or_else(|e| e.into_inner());
        let (order, set) = &mut *guard;
        if !set.insert(jti.to_string()) {
            return false;
        }
        order.push_back(jti.to_string());
        while order.len() > MAX_REVOKED_SESSIONS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> ServiceError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => expired(),
        ErrorKind::ImmatureSignature => unauthenticated("the token is not valid yet (nbf)"),
        ErrorKind::InvalidSignature => unauthenticated("the token's signature does not verify"),
        ErrorKind::InvalidAudience => unauthenticated("the token is for another audience"),
        ErrorKind::InvalidIssuer => unauthenticated("the token is from another issuer"),
        ErrorKind::InvalidAlgorithm => unauthenticated("the token's algorithm is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => unauthenticated(format!("the token has no {c:?} claim")),
        _ => unauthenticated("the token is malformed or not accepted"),
    }
}

fn verify_jwt(token: &str, keys: &[VerifyKey], config: &JwtConfig) -> Result<Principal, ServiceError> {
    // `alg: none` and unknown algorithms fail here: the header parser knows only real algorithms.
    let header = jsonwebtoken::decode_header(token).map_err(jwt_error)?;
    let candidates: Vec<&VerifyKey> = keys
        .iter()
        .filter(|k| k.alg == header.alg)
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(unauthenticated(format!("tokens signed with {:?} are not accepted here", header.alg)));
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = config.leeway_secs;
    validation.validate_nbf = true;
    // A configured issuer or audience makes the claim required: a token that leaves it out (one meant for
    // another service of the same identity provider, say) is refused like one that names another.
    let mut required = vec!["exp"];
    required.extend(config.issuer.as_ref().map(|_| "iss"));
    required.extend(config.audience.as_ref().map(|_| "aud"));
    validation.set_required_spec_claims(&required);
    match &config.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &config.issuer {
        validation.set_issuer(&[iss]);
    }
    let mut last = unauthenticated("the token's signature does not verify");
    for key in candidates {
        match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &validation) {
            Ok(data) => return principal_from_claims(&data.claims, config),
            Err(e) => last = jwt_error(e),
        }
    }
    Err(last)
}

/// The value at a dotted path in the claims.
fn claim<'a>(claims: &'a serde_json::Map<String, serde_json::Value>, path: &str) -> Option<&'a serde_json::Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn principal_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    config: &JwtConfig,
) -> Result<Principal, ServiceError> {
    let subject = claim(claims, &config.subject_claim)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| unauthenticated(format!("the token has no usable {:?} claim", config.subject_claim)))?;
    let groups = match claim(claims, &config.groups_claim) {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str()).map(str::to_string).collect(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    Ok(Principal {
        subject: subject.to_string(),
        groups,
        expires_at: claims.get("exp").and_then(|v| v.as_u64()),
        token_id: claims.get("jti").and_then(|v| v.as_str()).map(str::to_string),
    })
}

/// Reads the credential of an HTTP request: `Authorization: Bearer`, else the session cookie.
pub fn credential(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = v.splitn(2, ' ');
        if parts.next().is_some_and(|s| s.eq_ignore_ascii_case("bearer")) {
            return Some(parts.next().unwrap_or("").trim().to_string());
        }
    }
    session_cookie(headers)
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_string())
}

/// `Set-Cookie` value for a session: HttpOnly, SameSite=Strict, Secure on HTTPS.
pub fn session_set_cookie(value: &str, max_age_secs: u64, secure: bool) -> String {
    let mut c = cookie::Cookie::build((SESSION_COOKIE, value.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age_secs.min(i64::MAX as u64) as i64))
        .secure(secure)
        .build();
    if value.is_empty() {
        c.make_removal();
    }
    c.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_token_and_session_round_trip() {
        let auth = Authenticator::local("secret-token".into());
        let p = auth.verify("secret-token").unwrap();
        assert_eq!(p.subject, LOCAL_SUBJECT);
        assert_eq!(auth.verify("secret-tokeN").unwrap_err().code, ErrorCode::Unauthenticated);
        let (cookie, age) = auth.session_for(&p, "secret-token").unwrap();
        assert_eq!(age, LOCAL_SESSION_SECS);
        let s = auth.verify(&cookie).unwrap();
        assert_eq!(s.subject, LOCAL_SUBJECT);
        auth.sign_out(&s);
        assert_eq!(auth.verify(&cookie).unwrap_err().code, ErrorCode::TokenRevoked);
        // Another server's session does not verify here.
        let other = Authenticator::local("other".into());
        let (foreign, _) = other.session_for(&p, "other").unwrap();
        assert_eq!(auth.verify(&foreign).unwrap_err().code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = session_set_cookie("v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"), "{c}");
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::COOKIE, "a=b; porthole_session=xyz".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("xyz"));
        h.insert(axum::http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), GENERATED_TOKEN_LEN);
        assert_ne!(a, b);
    }
}
