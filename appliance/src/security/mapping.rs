//! Which user a client certificate stands for, with rules shaped like Kafka's
//! `ssl.principal.mapping.rules`: each rule is `RULE:PATTERN/REPLACEMENT/` (optionally ending
//! in `L` or `U` to lower- or upper-case the result) or `DEFAULT`. The first rule whose pattern
//! matches the whole subject name (RFC 4514: `CN=alice,OU=ops,O=plant`) gives the user's name;
//! `DEFAULT` gives the common name, else the first DNS name of the certificate. With no rules,
//! `DEFAULT` alone applies. A name that is not a valid user name is refused.

use regex::Regex;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use super::{Principal, SecurityError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

#[derive(Debug, Clone)]
enum Rule {
    Pattern {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
    Default,
}

/// The configured rules, in order.
#[derive(Debug, Clone)]
pub struct PrincipalRules(Vec<Rule>);

impl Default for PrincipalRules {
    fn default() -> Self {
        Self(vec![Rule::Default])
    }
}

impl PrincipalRules {
    pub fn parse(rules: &[String]) -> Result<Self, SecurityError> {
        if rules.is_empty() {
            return Ok(Self::default());
        }
        rules
            .iter()
            .map(|rule| parse_rule(rule))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The user a client certificate (DER) stands for.
    pub fn principal(&self, certificate: &[u8]) -> Result<Principal, SecurityError> {
        let refused = |reason: String| SecurityError::ClientCertificate { reason };
        let (_, certificate) = X509Certificate::from_der(certificate)
            .map_err(|error| refused(format!("it does not parse: {error}")))?;
        let subject = rfc4514(certificate.subject());
        let common_name = certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let dns_name = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|names| {
                names
                    .value
                    .general_names
                    .iter()
                    .find_map(|name| match name {
                        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                        _ => None,
                    })
            });
        for rule in &self.0 {
            let name = match rule {
                Rule::Default => common_name.clone().or_else(|| dns_name.clone()),
                Rule::Pattern {
                    pattern,
                    replacement,
                    case,
                } => pattern.captures(&subject).map(|captures| {
                    let mut name = String::new();
                    captures.expand(replacement, &mut name);
                    match case {
                        Case::Keep => name,
                        Case::Lower => name.to_lowercase(),
                        Case::Upper => name.to_uppercase(),
                    }
                }),
            };
            if let Some(name) = name {
                return Principal::user(&name)
                    .map_err(|error| refused(format!("the subject {subject:?} maps to {error}")));
            }
        }
        Err(refused(format!(
            "no principal mapping rule matches the subject {subject:?}"
        )))
    }
}

fn parse_rule(rule: &str) -> Result<Rule, SecurityError> {
    let invalid = |reason: &str| SecurityError::InvalidMappingRule {
        rule: rule.to_owned(),
        reason: reason.to_owned(),
    };
    if rule == "DEFAULT" {
        return Ok(Rule::Default);
    }
    let body = rule
        .strip_prefix("RULE:")
        .ok_or_else(|| invalid("a rule is DEFAULT or RULE:PATTERN/REPLACEMENT/[LU]"))?;
    let (body, case) = match body.rsplit_once('/') {
        Some((body, "")) => (body, Case::Keep),
        Some((body, "L")) => (body, Case::Lower),
        Some((body, "U")) => (body, Case::Upper),
        _ => return Err(invalid("a rule ends in /, /L or /U")),
    };
    let (pattern, replacement) = body
        .rsplit_once('/')
        .ok_or_else(|| invalid("a rule is RULE:PATTERN/REPLACEMENT/"))?;
    // The whole subject must match, as in Kafka.
    let pattern = Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|error| invalid(&format!("the pattern does not compile: {error}")))?;
    Ok(Rule::Pattern {
        pattern,
        replacement: replacement.to_owned(),
        case,
    })
}

/// A name as RFC 4514 writes it: the last relative name first, `KEY=value` joined by commas.
fn rfc4514(name: &X509Name<'_>) -> String {
    name.iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .flat_map(|rdn| rdn.iter())
        .map(|attribute| {
            let key = oid2abbrev(attribute.attr_type(), oid_registry())
                .map_or_else(|_| attribute.attr_type().to_id_string(), str::to_owned);
            format!("{key}={}", attribute.as_str().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn certificate(common_name: Option<&str>, organization: Option<&str>, dns: &[&str]) -> Vec<u8> {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let mut name = DistinguishedName::new();
        if let Some(organization) = organization {
            name.push(DnType::OrganizationName, organization);
        }
        if let Some(common_name) = common_name {
            name.push(DnType::CommonName, common_name);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn rules(rules: &[&str]) -> PrincipalRules {
        PrincipalRules::parse(&rules.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_default_is_the_common_name_then_the_dns_name() {
        let default = PrincipalRules::default();
        let alice = certificate(Some("alice"), Some("plant"), &[]);
        assert_eq!(default.principal(&alice).unwrap().to_string(), "User:alice");
        let by_dns = certificate(None, Some("plant"), &["scraper.example.org"]);
        assert_eq!(
            default.principal(&by_dns).unwrap().to_string(),
            "User:scraper.example.org"
        );
    }

    #[test]
    fn the_first_matching_rule_maps_the_subject() {
        let rules = rules(&[
            r"RULE:^CN=([A-Za-z]+)\.ops,O=plant$/$1/L",
            r"RULE:^CN=(.*),O=lab$/lab-$1/",
            "DEFAULT",
        ]);
        let ops = certificate(Some("Alice.ops"), Some("plant"), &[]);
        assert_eq!(rules.principal(&ops).unwrap().to_string(), "User:alice");
        let lab = certificate(Some("bob"), Some("lab"), &[]);
        assert_eq!(rules.principal(&lab).unwrap().to_string(), "User:lab-bob");
        let other = certificate(Some("carol"), Some("elsewhere"), &[]);
        assert_eq!(rules.principal(&other).unwrap().to_string(), "User:carol");
    }

    #[test]
    fn unmatched_subjects_and_unusable_names_are_refused() {
        let strict = rules(&[r"RULE:^CN=(.*),O=plant$/$1/"]);
        assert!(
            strict
                .principal(&certificate(Some("x"), Some("lab"), &[]))
                .is_err()
        );
        let spaced = certificate(Some("two words"), Some("plant"), &[]);
        assert!(strict.principal(&spaced).is_err());
        assert!(strict.principal(b"not a certificate").is_err());
    }

    #[test]
    fn malformed_rules_are_refused() {
        for rule in ["RULE:x", "RULE:(/x/", "RULE:a/b/Q", "default", ""] {
            assert!(PrincipalRules::parse(&[rule.to_owned()]).is_err(), "{rule}");
        }
    }
}
