//! The stats token's claims as both ends read them without verifying: the
//! activator reads `aud` of the token it is about to send (to warn about a
//! wrong projection), the operator reads `exp` of a token the API server has
//! just vouched for (to cache the verdict until then). Verification is the
//! API server's (TokenReview), never this.

use base64::Engine as _;

/// The claims (payload) of a JWT, unverified; `None` if it is not one.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_payload_of_a_jwt_and_nothing_else() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = engine.encode(br#"{"aud":["a"],"exp":42}"#);
        let token = format!("e30.{payload}.sig");
        let claims = unverified_claims(&token).expect("claims");
        assert_eq!(claims["exp"], 42);
        assert_eq!(claims["aud"][0], "a");
        assert!(unverified_claims("not a token").is_none());
        assert!(unverified_claims("a.!!!.c").is_none());
        assert!(unverified_claims(&format!("a.{}.c", engine.encode(b"not json"))).is_none());
    }
}
