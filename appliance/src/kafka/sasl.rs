//! SASL on the Kafka listener, as a state machine without I/O: PLAIN and SCRAM-SHA-256/512
//! (RFC 5802) against the users of `security::Users`. A connection is authenticated only once
//! the client's proof was verified; a finished exchange with a wrong proof is a failure, and
//! so is an unknown user, with the same message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::security::{Principal, ScramCredential, ScramMechanism, Users};

/// The mechanisms offered, by their SASL names.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
/// What a client is told for any wrong credential.
const INVALID: &str = "authentication failed: invalid credentials";

/// Where a connection's exchange is.
#[derive(Debug)]
pub enum Sasl {
    /// No mechanism chosen yet (SaslHandshake comes next).
    Start,
    /// PLAIN chosen: one message with the user and the password.
    Plain,
    /// SCRAM chosen: the client's first message comes next.
    ScramFirst(ScramMechanism),
    /// SCRAM: the server's first message was sent; the client's proof comes next.
    ScramFinal {
        mechanism: ScramMechanism,
        principal: Principal,
        credential: ScramCredential,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    /// The client proved who it is.
    Authenticated(Principal),
}

/// What one SaslAuthenticate step gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// The client is `principal`; send these bytes (possibly empty) as the last message.
    Done(Principal, Vec<u8>),
    /// The exchange failed: answer SASL_AUTHENTICATION_FAILED with this message and close.
    Failed(String),
}

impl Sasl {
    /// SaslHandshake: chooses `mechanism`, or says it is not offered.
    pub fn handshake(&mut self, mechanism: &str) -> Result<(), String> {
        if !matches!(self, Sasl::Start) {
            return Err("SaslHandshake after a mechanism was chosen".to_owned());
        }
        *self = match mechanism {
            "PLAIN" => Sasl::Plain,
            "SCRAM-SHA-256" => Sasl::ScramFirst(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Sasl::ScramFirst(ScramMechanism::Sha512),
            other => return Err(format!("the mechanism {other:?} is not offered")),
        };
        Ok(())
    }

    /// The principal, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Sasl::Authenticated(principal) => Some(principal),
            _ => None,
        }
    }

    /// SaslAuthenticate: one client message. `nonce` is fresh randomness for SCRAM (printable,
    /// no comma). PLAIN's password check runs Argon2id: call this off the async threads.
    pub fn authenticate(&mut self, users: &Users, message: &[u8], nonce: &str) -> Step {
        let state = std::mem::replace(self, Sasl::Start);
        let step = match state {
            Sasl::Plain => plain(users, message),
            Sasl::ScramFirst(mechanism) => match scram_first(users, mechanism, message, nonce) {
                Ok((next, reply)) => {
                    *self = next;
                    return Step::Continue(reply.into_bytes());
                }
                Err(reason) => Step::Failed(reason),
            },
            Sasl::ScramFinal {
                mechanism,
                principal,
                credential,
                client_first_bare,
                server_first,
                nonce,
            } => scram_final(
                mechanism,
                principal,
                &credential,
                &client_first_bare,
                &server_first,
                &nonce,
                message,
            ),
            Sasl::Start | Sasl::Authenticated(_) => {
                Step::Failed("SaslAuthenticate without a SaslHandshake first".to_owned())
            }
        };
        if let Step::Done(principal, _) = &step {
            *self = Sasl::Authenticated(principal.clone());
        }
        step
    }
}

/// `[authzid] NUL authcid NUL password` (RFC 4616).
fn plain(users: &Users, message: &[u8]) -> Step {
    let text = String::from_utf8_lossy(message);
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("a PLAIN message is [authzid] NUL user NUL password".to_owned());
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failed("PLAIN cannot act for another user".to_owned());
    }
    match users.sign_in(user, password) {
        Some(principal) => Step::Done(principal, Vec::new()),
        None => Step::Failed(INVALID.to_owned()),
    }
}

/// `n,[a=authzid],n=user,r=client-nonce[,extensions]`: answers `r=nonce,s=salt,i=iterations`.
fn scram_first(
    users: &Users,
    mechanism: ScramMechanism,
    message: &[u8],
    server_nonce: &str,
) -> Result<(Sasl, String), String> {
    let text = std::str::from_utf8(message).map_err(|_| "a SCRAM message is UTF-8".to_owned())?;
    let malformed = || "malformed SCRAM client-first message".to_owned();
    let (gs2, client_first_bare) = match text.split_once(',') {
        Some(("n" | "y", rest)) => rest.split_once(',').ok_or_else(malformed)?,
        Some(("p", _)) => return Err("SCRAM channel binding is not supported".to_owned()),
        _ => return Err(malformed()),
    };
    let mut attributes = client_first_bare.split(',');
    let user = attributes
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .map(unescape_name)
        .ok_or_else(malformed)??;
    let client_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|nonce| !nonce.is_empty())
        .ok_or_else(malformed)?;
    if let Some(authzid) = gs2.strip_prefix("a=")
        && unescape_name(authzid)? != user
    {
        return Err("SCRAM cannot act for another user".to_owned());
    }
    let (principal, credential) = users
        .scram(&user, mechanism)
        .ok_or_else(|| INVALID.to_owned())?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&credential.salt),
        credential.iterations
    );
    let next = Sasl::ScramFinal {
        mechanism,
        principal,
        credential,
        client_first_bare: client_first_bare.to_owned(),
        server_first: server_first.clone(),
        nonce,
    };
    Ok((next, server_first))
}

/// `c=channel-binding,r=nonce[,extensions],p=proof`: answers `v=server-signature`.
fn scram_final(
    mechanism: ScramMechanism,
    principal: Principal,
    credential: &ScramCredential,
    client_first_bare: &str,
    server_first: &str,
    nonce: &str,
    message: &[u8],
) -> Step {
    let Ok(text) = std::str::from_utf8(message) else {
        return Step::Failed("a SCRAM message is UTF-8".to_owned());
    };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return Step::Failed("malformed SCRAM client-final message".to_owned());
    };
    let mut attributes = without_proof.split(',');
    let binding = attributes.next().and_then(|a| a.strip_prefix("c="));
    let echoed = attributes.next().and_then(|a| a.strip_prefix("r="));
    // Without channel binding the client sends its GS2 header back: "n,," or "y,,".
    let binding_ok = binding.is_some_and(|b| b == "biws" || b == "eSws");
    // librdkafka puts its own nonce before the one the server sent, which already starts
    // with it; Kafka accepts a nonce that ends with the server's, and so does this.
    if !binding_ok || !echoed.is_some_and(|echoed| echoed.ends_with(nonce)) {
        return Step::Failed("SCRAM client-final message does not match the exchange".to_owned());
    }
    let Ok(proof) = BASE64.decode(proof) else {
        return Step::Failed("malformed SCRAM proof".to_owned());
    };
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    match credential.verify(mechanism, auth_message.as_bytes(), &proof) {
        Some(signature) => Step::Done(
            principal,
            format!("v={}", BASE64.encode(signature)).into_bytes(),
        ),
        None => Step::Failed(INVALID.to_owned()),
    }
}

/// A SCRAM user name: `=2C` is a comma and `=3D` an equals sign; any other `=` is malformed.
fn unescape_name(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("malformed SCRAM user name".to_owned()),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::meta::Meta;

    async fn users_with(name: &str, password: &str) -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(Meta::open(&dir.path().join("meta")).unwrap()).unwrap();
        users
            .set_password(
                Principal::user(name).unwrap(),
                password,
                crate::security::PasswordChange::NewUser,
            )
            .await
            .unwrap();
        (dir, users)
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The client side of SCRAM-SHA-256, as RFC 5802 says it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = BASE64
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    async fn scram(password_given: &str) -> (Step, Sasl) {
        let (_dir, users) = users_with("bob", "correct horse battery").await;
        let mut sasl = Sasl::Start;
        sasl.handshake("SCRAM-SHA-256").unwrap();
        let client_first_bare = "n=bob,r=fyko+d2lbbFgONRv9qkxdawL";
        let Step::Continue(server_first) = sasl.authenticate(
            &users,
            format!("n,,{client_first_bare}").as_bytes(),
            "3rfcNHYJY1",
        ) else {
            panic!("a server-first message")
        };
        let server_first = String::from_utf8(server_first).unwrap();
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1,s="));
        let last = client_final(password_given, client_first_bare, &server_first);
        let step = sasl.authenticate(&users, last.as_bytes(), "unused");
        (step, sasl)
    }

    #[tokio::test]
    async fn scram_authenticates_only_with_the_right_proof() {
        let (step, sasl) = scram("correct horse battery").await;
        assert!(
            matches!(&step, Step::Done(p, reply) if p.to_string() == "User:bob" && reply.starts_with(b"v=")),
            "{step:?}"
        );
        assert_eq!(sasl.principal().unwrap().to_string(), "User:bob");
        let (step, sasl) = scram("wrong horse battery").await;
        assert_eq!(step, Step::Failed(INVALID.to_owned()));
        assert!(sasl.principal().is_none());
    }

    #[tokio::test]
    async fn unknown_users_and_malformed_messages_fail_without_panicking() {
        let (_dir, users) = users_with("bob", "correct horse battery").await;
        for message in [
            &b"n,,n=alice,r=abc"[..],
            b"",
            b"n,,",
            b"p=tls-server-end-point,,n=bob,r=x",
            b"n,,n=b=ob,r=x",
            b"n,a=alice,n=bob,r=x",
            b"\xff\xfe",
        ] {
            let mut sasl = Sasl::Start;
            sasl.handshake("SCRAM-SHA-512").unwrap();
            let step = sasl.authenticate(&users, message, "n");
            assert!(matches!(step, Step::Failed(_)), "{message:?}: {step:?}");
            assert!(sasl.principal().is_none());
        }
        let mut sasl = Sasl::Start;
        assert!(sasl.handshake("GSSAPI").is_err());
    }

    #[tokio::test]
    async fn plain_checks_the_password() {
        let (_dir, users) = users_with("bob", "correct horse battery").await;
        let mut sasl = Sasl::Start;
        sasl.handshake("PLAIN").unwrap();
        let step = sasl.authenticate(&users, b"\0bob\0correct horse battery", "");
        assert!(matches!(step, Step::Done(..)), "{step:?}");
        let mut sasl = Sasl::Start;
        sasl.handshake("PLAIN").unwrap();
        let step = sasl.authenticate(&users, b"\0bob\0wrong", "");
        assert_eq!(step, Step::Failed(INVALID.to_owned()));
    }
}
