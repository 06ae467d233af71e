//! Secrets in plugin configuration: a value may name where a secret is kept instead of
//! holding it, `${file:PATH}` (the file's contents, without a final newline) or `${env:NAME}`
//! (the daemon's environment variable), alone or inside other text
//! (`url=mqtt://plant:${env:APPLIANCE_SECRET_MQTT}@broker`). `$${file:` and `$${env:` are
//! literal; any other `${...}` is left to the plugin (`timestamp-router`'s `${topic}`).
//!
//! Specs keep the references and are what is stored and answered; the plugin host resolves
//! them each time it starts an instance, so a secret lives only in the memory of the daemon
//! and the plugin. Every value resolved is also remembered for [`redact`], which the API
//! applies to its error messages and states and the log writer ([`Redacting`]) to every line,
//! so a plugin that puts its password into an error or a log line does not show it.
//!
//! Files are read only inside the directories `security.secret-dirs` names and variables only
//! under the prefixes `security.secret-env-prefixes`: whoever may create a connector must not
//! be able to hand a plugin any file or variable the daemon can read (its admin token, say).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

/// The providers a reference names, as it starts: other `${...}` are a plugin's own syntax
/// (`timestamp-router`'s `${topic}`) and pass through.
const PROVIDERS: [&str; 2] = ["file:", "env:"];
/// The most bytes one secret has.
const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// The fewest bytes one secret has: a shorter one could not be told apart in a log line.
const MIN_SECRET_BYTES: usize = 4;
/// What a secret is replaced with wherever it would show.
pub const REDACTED: &str = "[redacted]";
/// Secrets remembered for redaction at most; more are refused.
const MAX_SECRETS: usize = 10_000;

static SECRETS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "setting {key:?}: {reference} is not a secret reference: write `${{file:PATH}}` or \
         `${{env:NAME}}` (and `$${{file:` or `$${{env:` for the literal text)"
    )]
    Malformed { key: String, reference: String },
    #[error(
        "setting {key:?}: ${{file:{}}} is outside the secret directories ({dirs}); put the file \
         in one, or add its directory to `security.secret-dirs`",
        path.display()
    )]
    FileNotAllowed {
        key: String,
        path: PathBuf,
        dirs: String,
    },
    #[error(
        "setting {key:?}: ${{env:{name}}} does not start with an allowed prefix ({prefixes}); \
         rename it, or add a prefix to `security.secret-env-prefixes`"
    )]
    EnvNotAllowed {
        key: String,
        name: String,
        prefixes: String,
    },
    #[error(
        "setting {key:?} is a secret of {owner}: give it as a reference, \
         `${{file:PATH}}` or `${{env:NAME}}`, so it is never stored in plain text \
         (docs/security.md)"
    )]
    Literal { key: String, owner: String },
    #[error("setting {key:?}: {reference} cannot be read: {reason}")]
    Unreadable {
        key: String,
        reference: String,
        reason: String,
    },
}

/// Reads an environment variable: the process's, but for tests.
type EnvReader = fn(&str) -> Result<String, std::env::VarError>;

/// Where secrets may be read from; resolves references.
#[derive(Debug, Clone)]
pub struct SecretProviders {
    dirs: Vec<PathBuf>,
    env_prefixes: Vec<String>,
    read_env: EnvReader,
}

/// Nothing is readable.
impl Default for SecretProviders {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

impl SecretProviders {
    pub fn new(dirs: Vec<PathBuf>, env_prefixes: Vec<String>) -> Self {
        Self {
            dirs,
            env_prefixes,
            read_env: |name| std::env::var(name),
        }
    }

    /// `config` with every reference replaced by its secret; borrowed when it has none.
    pub fn resolve<'a>(
        &self,
        config: &'a [(String, String)],
    ) -> Result<Cow<'a, [(String, String)]>, SecretError> {
        if !config.iter().any(|(_, value)| value.contains("${")) {
            return Ok(Cow::Borrowed(config));
        }
        config
            .iter()
            .map(|(key, value)| Ok((key.clone(), self.resolve_value(key, value)?)))
            .collect::<Result<Vec<_>, _>>()
            .map(Cow::Owned)
    }

    /// Refuses a literal value for any of `secret_keys` (the keys `owner`, a plugin or an
    /// export's storage, declares secret): such a value must be one provider reference, or
    /// empty for none.
    pub fn require_references(
        config: &[(String, String)],
        secret_keys: &[impl AsRef<str>],
        owner: &str,
    ) -> Result<(), SecretError> {
        let is_reference = |value: &str| {
            value
                .strip_prefix("${")
                .and_then(|inner| inner.strip_suffix('}'))
                .is_some_and(|inner| {
                    !inner.contains('}') && PROVIDERS.iter().any(|p| inner.starts_with(p))
                })
        };
        match config.iter().find(|(key, value)| {
            secret_keys.iter().any(|secret| secret.as_ref() == key)
                && !value.is_empty()
                && !is_reference(value)
        }) {
            Some((key, _)) => Err(SecretError::Literal {
                key: key.clone(),
                owner: owner.to_owned(),
            }),
            None => Ok(()),
        }
    }

    fn resolve_value(&self, key: &str, value: &str) -> Result<String, SecretError> {
        let mut resolved = String::with_capacity(value.len());
        let mut rest = value;
        let names_provider = |text: &str| PROVIDERS.iter().any(|p| text.starts_with(p));
        while let Some(at) = rest.find('$') {
            resolved.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$${")
                && names_provider(after)
            {
                resolved.push_str("${");
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${")
                && names_provider(after)
            {
                let malformed = || SecretError::Malformed {
                    key: key.to_owned(),
                    reference: format!("`{}`", rest.chars().take(40).collect::<String>()),
                };
                let end = after.find('}').ok_or_else(malformed)?;
                let (provider, argument) = after[..end].split_once(':').ok_or_else(malformed)?;
                let secret = match provider {
                    "file" => self.file(key, Path::new(argument))?,
                    _ => self.env(key, argument)?,
                };
                remember(key, &after[..end], &secret)?;
                resolved.push_str(&secret);
                rest = &after[end + 1..];
            } else {
                resolved.push('$');
                rest = &rest[1..];
            }
        }
        resolved.push_str(rest);
        Ok(resolved)
    }

    fn file(&self, key: &str, path: &Path) -> Result<String, SecretError> {
        let unreadable = |reason: String| SecretError::Unreadable {
            key: key.to_owned(),
            reference: format!("${{file:{}}}", path.display()),
            reason,
        };
        // Canonical paths, so `..` and symbolic links cannot lead out of a directory.
        let canonical = path.canonicalize().map_err(|e| unreadable(e.to_string()))?;
        let allowed = self.dirs.iter().any(|dir| {
            dir.canonicalize()
                .is_ok_and(|dir| canonical.starts_with(dir))
        });
        if !allowed {
            return Err(SecretError::FileNotAllowed {
                key: key.to_owned(),
                path: path.to_path_buf(),
                dirs: list(self.dirs.iter().map(|dir| dir.display().to_string())),
            });
        }
        let mut contents = String::new();
        std::fs::File::open(&canonical)
            .map_err(|e| unreadable(e.to_string()))?
            .take(MAX_SECRET_BYTES + 1)
            .read_to_string(&mut contents)
            .map_err(|e| unreadable(e.to_string()))?;
        if contents.len() as u64 > MAX_SECRET_BYTES {
            return Err(unreadable(format!(
                "it has more than {MAX_SECRET_BYTES} bytes"
            )));
        }
        let trimmed = contents.strip_suffix('\n').unwrap_or(&contents);
        Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
    }

    fn env(&self, key: &str, name: &str) -> Result<String, SecretError> {
        if !self
            .env_prefixes
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
        {
            return Err(SecretError::EnvNotAllowed {
                key: key.to_owned(),
                name: name.to_owned(),
                prefixes: list(self.env_prefixes.iter().cloned()),
            });
        }
        (self.read_env)(name).map_err(|e| SecretError::Unreadable {
            key: key.to_owned(),
            reference: format!("${{env:{name}}}"),
            reason: e.to_string(),
        })
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none are set".to_owned()
    } else {
        items.join(", ")
    }
}

/// Remembers a secret for [`redact`].
fn remember(key: &str, reference: &str, secret: &str) -> Result<(), SecretError> {
    let refuse = |reason: &str| SecretError::Unreadable {
        key: key.to_owned(),
        reference: format!("${{{reference}}}"),
        reason: reason.to_owned(),
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(refuse(
            "a secret has at least 4 bytes, or it could not be kept out of logs",
        ));
    }
    let mut secrets = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    if secrets.len() >= MAX_SECRETS && !secrets.contains(secret) {
        return Err(refuse(
            "the appliance holds as many secrets as it can redact",
        ));
    }
    secrets.insert(secret.to_owned());
    Ok(())
}

/// `text` with every secret ever resolved replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    let mut text = Cow::Borrowed(text);
    // Longest first, so a secret that contains another is replaced whole.
    let mut found: Vec<&String> = secrets
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .collect();
    found.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    for secret in found {
        text = Cow::Owned(text.replace(secret.as_str(), REDACTED));
    }
    text
}

/// A writer that redacts what it writes: the log's, given each formatted line whole.
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn declared_secret_keys_take_references_only() {
        let keys = vec!["password".to_owned()];
        let check = |pairs: &[(&str, &str)]| {
            SecretProviders::require_references(&config(pairs), &keys, "p")
        };
        check(&[
            ("password", "${file:/run/secrets/mqtt}"),
            ("url", "mqtt://h"),
        ])
        .unwrap();
        check(&[("password", "${env:APPLIANCE_SECRET_PW}")]).unwrap();
        check(&[("password", "")]).unwrap();
        check(&[("username", "literal is fine here")]).unwrap();
        for literal in [
            "hunter2",
            "x${env:APPLIANCE_SECRET_PW}",
            "${env:A}${env:B}",
            "${topic}",
            "$${env:APPLIANCE_SECRET_PW}",
        ] {
            let error = check(&[("password", literal)]).unwrap_err();
            assert!(matches!(&error, SecretError::Literal { key, .. } if key == "password"));
            assert!(!error.to_string().contains(literal), "{error}");
        }
    }

    #[test]
    fn references_resolve_inside_their_directories_and_prefixes_only() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::write(secrets.join("mqtt"), "s3cret-Mqtt-pw\n").unwrap();
        std::fs::write(dir.path().join("admin.token"), "apl_not_for_plugins").unwrap();
        let providers = SecretProviders {
            read_env: |name| match name {
                "APPLIANCE_SECRET_TEST_DB" => Ok("db-Pa55word".to_owned()),
                _ => Err(std::env::VarError::NotPresent),
            },
            ..SecretProviders::new(vec![secrets.clone()], vec!["APPLIANCE_SECRET_".into()])
        };

        let plain = config(&[("rate", "100")]);
        assert!(matches!(
            providers.resolve(&plain).unwrap(),
            Cow::Borrowed(_)
        ));

        let given = config(&[
            ("url", "mqtt://plant:${file:SECRETS/mqtt}@broker"),
            ("db", "${env:APPLIANCE_SECRET_TEST_DB}"),
            ("template", "$${env:X} and ${topic} are not $ references"),
        ]);
        let given: Vec<_> = given
            .into_iter()
            .map(|(k, v)| (k, v.replace("SECRETS", secrets.to_str().unwrap())))
            .collect();
        let resolved = providers.resolve(&given).unwrap();
        assert_eq!(
            resolved.as_ref(),
            config(&[
                ("url", "mqtt://plant:s3cret-Mqtt-pw@broker"),
                ("db", "db-Pa55word"),
                ("template", "${env:X} and ${topic} are not $ references"),
            ])
        );
        assert_eq!(
            redact("login as plant:s3cret-Mqtt-pw failed (db-Pa55word)"),
            "login as plant:[redacted] failed ([redacted])"
        );

        let escape = format!("${{file:{}/../admin.token}}", secrets.display());
        let refused = providers.resolve(&config(&[("x", &escape)])).unwrap_err();
        assert!(
            matches!(refused, SecretError::FileNotAllowed { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("security.secret-dirs"));
        let refused = providers
            .resolve(&config(&[("x", "${env:HOME}")]))
            .unwrap_err();
        assert!(
            matches!(refused, SecretError::EnvNotAllowed { .. }),
            "{refused}"
        );
        for malformed in ["${file:", "${env:APPLIANCE_SECRET_TEST_DB"] {
            let refused = providers.resolve(&config(&[("x", malformed)])).unwrap_err();
            assert!(
                matches!(refused, SecretError::Malformed { .. }),
                "{malformed}: {refused}"
            );
        }
        let missing = providers
            .resolve(&config(&[("x", "${env:APPLIANCE_SECRET_NOT_SET}")]))
            .unwrap_err();
        assert!(
            matches!(missing, SecretError::Unreadable { .. }),
            "{missing}"
        );
    }

    #[test]
    fn the_log_writer_redacts_whole_lines() {
        remember("k", "env:X", "line-Secret-42").unwrap();
        let mut out = Redacting(Vec::new());
        out.write_all(b"connector failed: bad password line-Secret-42\n")
            .unwrap();
        assert_eq!(out.0, b"connector failed: bad password [redacted]\n");
        assert!(
            remember("k", "env:X", "abc").is_err(),
            "too short to redact"
        );
    }
}
